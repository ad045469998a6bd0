import numpy as np
import torch

from stamp.model.losses import mask_losses, patch_targets


def test_patch_targets_area_fraction():
    mask = np.zeros((56, 56), np.uint8)
    mask[:28, :14] = 1  # half of cell (0, 0)
    mask[28:, 28:] = 1  # all of cell (1, 1)
    mask[:28, 28:] = 255  # cell (0, 1) ignored
    frac, valid = patch_targets(mask, (2, 2))
    assert torch.allclose(frac, torch.tensor([[0.5, 0.0], [0.0, 1.0]]))
    assert torch.allclose(valid, torch.tensor([[1.0, 0.0], [1.0, 1.0]]))


def test_patch_targets_not_truncated():
    # 90% of a cell is foreground: the truncation bug would call it background
    mask = np.zeros((28, 28), np.uint8)
    mask[:, :25] = 1
    frac, _ = patch_targets(mask, (1, 1))
    assert abs(float(frac) - 25 / 28) < 1e-6


def test_mask_losses_perfect_and_weights():
    target = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    good = torch.tensor([[20.0, -20.0, 20.0, -20.0]])
    bce, dice = mask_losses(good, target)
    assert bce < 1e-6 and dice < 1e-6
    bad = -good
    bce_b, dice_b = mask_losses(bad, target)
    assert bce_b > 10 and dice_b > 0.6
    # a wrong cell with weight 0 does not count
    w = torch.tensor([[1.0, 1.0, 1.0, 0.0]])
    bce_w, _ = mask_losses(torch.tensor([[20.0, -20.0, 20.0, 20.0]]), target, w)
    assert bce_w < 1e-6
