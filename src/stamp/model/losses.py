"""Losses and patch-level targets.

L = w_text * L_text + w_bce * L_BCE + w_dice * L_Dice (the paper: L_text + L_BCE + L_Dice; the authors'
released checkpoints used 0.3 BCE + 0.7 Dice). Targets are per merged 28x28 cell.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

IGNORE_VALUE = 255


def patch_targets(
    mask: np.ndarray | torch.Tensor, grid_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Area fraction of foreground per cell, from a pixel mask at any resolution.

    The image the model sees is the original resized to (gh*28, gw*28), so cell (r, c) covers the same
    fraction of the original image; area-averaging the original mask onto the (gh, gw) grid gives the
    fraction of foreground in each cell (not the authors' bug of casting a bilinear sample to integer,
    which made a cell foreground only if its sample was exactly 1).

    Args:
        mask: (H, W) uint8/bool: 0 background, 1 foreground, 255 ignore.
        grid_hw: (gh, gw).

    Returns:
        fraction: (gh, gw) float32 in [0, 1], foreground share of the cell's non-ignored pixels.
        valid: (gh, gw) float32 in [0, 1], share of the cell's pixels that are not ignored (a loss weight;
            0 for cells that are entirely ignore).
    """
    m = torch.as_tensor(np.asarray(mask)) if not isinstance(mask, torch.Tensor) else mask
    if m.ndim != 2:
        raise ValueError(f"mask must be 2-D (H, W), got shape {tuple(m.shape)}")
    m = m.to(torch.int64)
    valid = (m != IGNORE_VALUE).float()
    fg = ((m != 0) & (m != IGNORE_VALUE)).float()
    gh, gw = int(grid_hw[0]), int(grid_hw[1])
    pooled = F.adaptive_avg_pool2d(torch.stack([fg, valid])[None], (gh, gw))[0]  # (2, gh, gw)
    fg_share, valid_share = pooled[0], pooled[1]
    fraction = torch.where(
        valid_share > 0, fg_share / valid_share.clamp_min(1e-12), torch.zeros_like(fg_share)
    )
    return fraction.clamp_(0, 1), valid_share


def mask_losses(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, smooth: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-mask BCE and soft Dice, averaged over masks.

    Args:
        logits: (M, N) placeholder logits (M masks of N cells; pad cells must have weight 0).
        target: (M, N) targets in [0, 1] (binary or soft).
        weight: (M, N) per-cell weights (0 for padding and ignore), default all ones.
        smooth: Dice smoothing term (1 as in the authors' code; makes empty-vs-empty a perfect score).

    Returns:
        (bce, dice): scalar tensors.
    """
    logits = logits.float()
    target = target.float()
    weight = torch.ones_like(target) if weight is None else weight.float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    bce = ((bce * weight).sum(-1) / weight.sum(-1).clamp_min(1.0)).mean()
    prob = torch.sigmoid(logits) * weight
    t = target * weight
    dice = 1.0 - (2.0 * (prob * t).sum(-1) + smooth) / (prob.sum(-1) + t.sum(-1) + smooth)
    return bce, dice.mean()


def text_loss_at(
    hidden: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    next_labels: torch.Tensor,
    lm_head: torch.nn.Module,
) -> torch.Tensor:
    """Next-token cross-entropy, computing the LM head only where there is a label.

    Args:
        hidden: (R, T, H) last hidden states; rows / cols: (n,) where each predicting token sits.
        next_labels: (n,) the token each of them must predict (positions without a label are left out,
            so nothing here needs to look at the values: no device synchronisation).
    """
    dev = hidden.device
    if next_labels.numel() == 0:
        return hidden.sum() * 0.0
    rows, cols, next_labels = rows.to(dev), cols.to(dev), next_labels.to(dev)
    logits = lm_head(hidden[rows, cols])  # (n, V)
    return F.cross_entropy(logits.float(), next_labels)
