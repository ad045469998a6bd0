"""Upsampling of per-cell probabilities (gh x gw) to an image size.

Interpolate probabilities, not logits: bilinear of weak positive logits thresholded at 0 shrinks regions
(see the CPU calibration notes); bilinear of sigmoid probabilities thresholded at 0.5 does not.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

_MODES = ("bilinear", "nearest", "bicubic", "area")


def upsample_probs(
    probs: torch.Tensor | np.ndarray, size: tuple[int, int], mode: str = "bilinear"
) -> np.ndarray:
    """Resize a (gh, gw) probability map to (H, W).

    Args:
        probs: (gh, gw) float probabilities in [0, 1] (numpy or torch, any float dtype/device).
        size: target (H, W).
        mode: "bilinear" (default; align_corners=False, so cell centres map to cell centres),
            "nearest", "bicubic" or "area".

    Returns:
        (H, W) float32 numpy array, clipped to [0, 1] (bicubic can overshoot).
    """
    if mode not in _MODES:
        raise ValueError(f"unknown upsampling mode {mode!r}; choose one of {_MODES}")
    t = torch.as_tensor(probs).detach().to(device="cpu", dtype=torch.float32)
    if t.ndim != 2 or t.numel() == 0:
        raise ValueError(f"probs must be a non-empty 2-D (gh, gw) map, got shape {tuple(t.shape)}")
    height, width = int(size[0]), int(size[1])
    if height <= 0 or width <= 0:
        raise ValueError(f"size must be positive (H, W), got {size}")
    kwargs = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    out = F.interpolate(t[None, None], size=(height, width), mode=mode, **kwargs)[0, 0]  # (H, W)
    return out.clamp_(0.0, 1.0).numpy()
