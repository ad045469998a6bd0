"""Image-guided upsampling of per-cell probabilities: bilinear, then a colour guided filter.

STAMP predicts one probability per 28x28-pixel cell, so a bilinear upsample has edges that are smooth
ramps about one cell wide and ignore the image. The guided filter (He, Sun and Tang, "Guided Image
Filtering", TPAMI 2013) fits, in every window, the output as a linear function of the guide image:
q = a . I + b. Where the window straddles an object edge, the ramp of the bilinear probabilities is
explained by the colour step of the image, so the output snaps to the image edge.

Choices:
- Colour guide (3 channels, a 3x3 covariance per pixel), not grey: objects that differ from their
  surroundings in hue but not in brightness (a red disk on a green field) are common in referring data.
- Window radius defaults to the cell size in image pixels (the width of the bilinear ramp).
- Images whose long side exceeds `WORK_SIDE` use the "fast guided filter" (He and Sun, 2015): the
  coefficients are computed on a downsampled guide and probability map, upsampled bilinearly and applied
  to the full-resolution guide, so the cost at full resolution is one dot product per pixel.
- Box filters are O(1) per pixel via cumulative sums (float64 to keep the differences exact).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from stamp.refine.upsample import upsample_probs

# Long side (pixels) above which the coefficients are computed on a downsampled copy.
WORK_SIDE = 512


def guided_upsample(
    probs: torch.Tensor | np.ndarray,
    image: Image.Image | np.ndarray,
    *,
    radius: int | None = None,
    eps: float = 1e-3,
) -> np.ndarray:
    """Upsample (gh, gw) probabilities to the image size, guided by the image's edges.

    Args:
        probs: (gh, gw) float probabilities in [0, 1], one per cell; the grid covers the whole image.
        image: PIL image (converted to RGB) or (H, W, 3) / (H, W) uint8 array: the guide.
        radius: window radius in full-resolution pixels; default: one cell, max(H / gh, W / gw).
        eps: regularisation on the guide's (0-1 scaled) colour variance; larger = smoother, closer to
            the bilinear input. Edges with a colour contrast well above sqrt(eps) are followed.

    Returns:
        (H, W) float32 probabilities in [0, 1]; threshold at 0.5 for a mask.

    Example:
        >>> q = guided_upsample(np.full((16, 16), 0.5), np.zeros((448, 448, 3), np.uint8))
        >>> q.shape, q.dtype
        ((448, 448), dtype('float32'))
    """
    guide = _guide_array(image)  # (H, W, 3) float32 in [0, 1]
    height, width = guide.shape[:2]
    probs_t = torch.as_tensor(probs).detach().cpu().float()
    if probs_t.ndim != 2 or probs_t.numel() == 0:
        raise ValueError(f"probs must be a non-empty 2-D (gh, gw) map, got shape {tuple(probs_t.shape)}")
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    if radius is None:
        radius = default_radius((height, width), tuple(probs_t.shape))
    if radius < 1:
        raise ValueError(f"radius must be >= 1, got {radius}")

    scale = max(1.0, max(height, width) / WORK_SIDE)  # fast guided filter subsampling factor
    low = (max(1, round(height / scale)), max(1, round(width / scale)))
    guide_low = guide if scale == 1.0 else _resize_channels(guide, low, antialias=True)
    p_low = upsample_probs(probs_t, low).astype(np.float64)  # (h, w)
    r_low = max(1, round(radius / scale))
    mean_a, mean_b = _guided_coefficients(guide_low.astype(np.float64), p_low, r_low, eps)
    if scale != 1.0:
        mean_a = _resize_channels(mean_a.astype(np.float32), (height, width), antialias=False)
        mean_b = _resize_channels(mean_b[..., None].astype(np.float32), (height, width), antialias=False)[..., 0]
    q = np.einsum("hwc,hwc->hw", mean_a.astype(np.float32), guide) + mean_b.astype(np.float32)
    return np.clip(q, 0.0, 1.0).astype(np.float32, copy=False)


def default_radius(image_size: tuple[int, int], grid: tuple[int, int]) -> int:
    """Window radius in pixels: one cell, i.e. the width of the bilinear ramp between two cell centres."""
    cell = max(image_size[0] / grid[0], image_size[1] / grid[1])
    return max(1, math.ceil(cell))


def _guide_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 guide in [0, 1] from a PIL image or a uint8 array (grey is repeated)."""
    if isinstance(image, Image.Image):
        arr = np.asarray(image.convert("RGB"))
    else:
        arr = np.asarray(image)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=2)
        if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
            raise ValueError(f"image must be (H, W, 3) or (H, W) uint8, got {arr.shape} {arr.dtype}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError("image is empty")
    return arr.astype(np.float32) / 255.0


def _resize_channels(x: np.ndarray, size: tuple[int, int], *, antialias: bool) -> np.ndarray:
    """Bilinear resize of an (h, w, C) float32 array to (size[0], size[1], C)."""
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)[None]  # (1, C, h, w)
    t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=antialias)
    return t[0].permute(1, 2, 0).contiguous().numpy()


def _box_mean(x: np.ndarray, radius: int) -> np.ndarray:
    """Mean over (2r+1)^2 windows clipped at the borders; x is (h, w) or (h, w, C), float64."""
    out = x
    counts = []
    for axis in (0, 1):
        n = x.shape[axis]
        idx = np.arange(n)
        lo, hi = np.maximum(idx - radius, 0), np.minimum(idx + radius + 1, n)
        zero = np.zeros_like(np.take(out, [0], axis=axis))
        csum = np.concatenate([zero, np.cumsum(out, axis=axis)], axis=axis)
        out = np.take(csum, hi, axis=axis) - np.take(csum, lo, axis=axis)
        counts.append((hi - lo).astype(np.float64))
    norm = counts[0][:, None] * counts[1][None, :]  # (h, w)
    return out / (norm if out.ndim == 2 else norm[..., None])


def _guided_coefficients(
    guide: np.ndarray, p: np.ndarray, radius: int, eps: float
) -> tuple[np.ndarray, np.ndarray]:
    """Box-averaged guided-filter coefficients (mean_a (h, w, 3), mean_b (h, w)) for q = a . I + b."""
    mean_i = _box_mean(guide, radius)  # (h, w, 3)
    mean_p = _box_mean(p, radius)  # (h, w)
    cov_ip = _box_mean(guide * p[..., None], radius) - mean_i * mean_p[..., None]  # (h, w, 3)
    pairs = [(0, 0), (0, 1), (0, 2), (1, 1), (1, 2), (2, 2)]
    products = np.stack([guide[..., i] * guide[..., j] for i, j in pairs], axis=-1)  # (h, w, 6)
    second = _box_mean(products, radius)
    sigma = np.empty(guide.shape[:2] + (3, 3))  # (h, w, 3, 3) colour covariance per window
    for k, (i, j) in enumerate(pairs):
        cov = second[..., k] - mean_i[..., i] * mean_i[..., j]
        sigma[..., i, j] = cov
        sigma[..., j, i] = cov
    sigma += eps * np.eye(3)
    a = np.linalg.solve(sigma, cov_ip[..., None])[..., 0]  # (h, w, 3)
    b = mean_p - np.einsum("hwc,hwc->hw", a, mean_i)
    return _box_mean(a, radius), _box_mean(b, radius)
