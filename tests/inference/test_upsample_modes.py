"""Post-processing of the cell logits: the three upsampling modes of `logits_to_mask`."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stamp.inference.predictor import logits_to_mask


@pytest.mark.parametrize("size", [(333, 250), (28 * 7, 28 * 9), (50, 41)])
def test_nearest_is_the_authors_cell_threshold_then_nearest(size):
    logits = torch.randn(7, 9, generator=torch.Generator().manual_seed(0))
    # their evaluation: cells with logit > 0, resized to the image by nearest on a float tensor
    want = F.interpolate((logits > 0).double()[None, None], size=size, mode="nearest")[0, 0].numpy() > 0
    got = logits_to_mask(logits, size, threshold=0.5, space="nearest")
    np.testing.assert_array_equal(got.mask, want)
    assert got.mask.shape == size


def test_nearest_differs_from_bilinear_on_a_noisy_mask():
    logits = torch.randn(16, 16, generator=torch.Generator().manual_seed(1)) * 3
    near = logits_to_mask(logits, (448, 448), space="nearest").mask
    bil = logits_to_mask(logits, (448, 448), space="prob").mask
    assert 0.01 < (near != bil).mean() < 0.5
    cells = near.reshape(16, 28, 16, 28)  # piecewise constant: every 28x28 block is one value
    assert (cells == cells[:, :1, :, :1]).all()
