"""The refiner interface shared by the no-op, image-guided and SAM refiners.

Every refiner has `refine(image, coarse_probs, coarse_mask) -> RefineResult`:
    image: the original image (PIL, converted to RGB; or an (H, W, 3) uint8 array);
    coarse_probs: (gh, gw) float probabilities in [0, 1], one per 28x28 cell, covering the whole image;
    coarse_mask: (H, W) bool mask at the original size (the caller's upsampled, thresholded prediction).
An empty coarse mask (the model predicted "no target") is returned unchanged by every refiner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from PIL import Image

from stamp.refine.guided import guided_upsample


class RefineError(ValueError):
    """A refiner that cannot be built: bad spec, missing or invalid model directory."""


@dataclass
class RefineResult:
    """Output of a refiner.

    Attributes:
        mask: (H, W) bool refined mask at the original image size.
        score: IoU agreement (0-1) between the returned mask and the coarse mask; 1.0 when unchanged.
        used_fallback: True when the refiner rejected its own output and returned the coarse mask.
        warning: one line explaining a fallback, else None.
    """

    mask: np.ndarray
    score: float
    used_fallback: bool = False
    warning: str | None = None


class Refiner(Protocol):
    """Anything with the refine() signature below."""

    def refine(
        self, image: Image.Image | np.ndarray, coarse_probs: np.ndarray, coarse_mask: np.ndarray
    ) -> RefineResult: ...


def to_rgb_image(image: Image.Image | np.ndarray) -> Image.Image:
    """An RGB PIL image from a PIL image of any mode or an (H, W, 3) / (H, W) uint8 array."""
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype != np.uint8 or arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] != 3):
        raise ValueError(
            f"image must be a PIL image or an (H, W, 3) uint8 array, got {arr.shape} {arr.dtype}"
        )
    return Image.fromarray(arr).convert("RGB")


def check_refine_inputs(
    image: Image.Image, coarse_probs: np.ndarray | torch.Tensor, coarse_mask: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Validate shapes; return (probs (gh, gw) float32, mask (H, W) bool) as numpy arrays."""
    probs = torch.as_tensor(coarse_probs).detach().cpu().float().numpy()
    if probs.ndim != 2 or probs.size == 0:
        raise ValueError(f"coarse_probs must be a non-empty (gh, gw) map, got shape {probs.shape}")
    mask = np.asarray(coarse_mask).astype(bool, copy=False)
    size = (image.height, image.width)
    if mask.shape != size:
        raise ValueError(f"coarse_mask shape {mask.shape} does not match the image size (H, W) = {size}")
    return probs, mask


def mask_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """IoU of two (H, W) bool masks; 1.0 when both are empty."""
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union


class NoRefiner:
    """Returns the coarse mask unchanged."""

    def refine(
        self, image: Image.Image | np.ndarray, coarse_probs: np.ndarray, coarse_mask: np.ndarray
    ) -> RefineResult:
        """See the module docstring; the result's mask is a copy of `coarse_mask`."""
        _, mask = check_refine_inputs(to_rgb_image(image), coarse_probs, coarse_mask)
        return RefineResult(mask=mask.copy(), score=1.0)

    def __repr__(self) -> str:
        return "NoRefiner()"


class GuidedRefiner:
    """Image-guided upsampling of the cell probabilities (`guided_upsample`), thresholded at 0.5."""

    def __init__(self, radius: int | None = None, eps: float = 1e-3, threshold: float = 0.5) -> None:
        self.radius = radius
        self.eps = eps
        self.threshold = threshold

    def refine(
        self, image: Image.Image | np.ndarray, coarse_probs: np.ndarray, coarse_mask: np.ndarray
    ) -> RefineResult:
        """See the module docstring. `coarse_mask` decides only emptiness and the agreement score."""
        rgb = to_rgb_image(image)
        probs, mask = check_refine_inputs(rgb, coarse_probs, coarse_mask)
        if not mask.any():
            return RefineResult(mask=mask.copy(), score=1.0)
        refined = guided_upsample(probs, rgb, radius=self.radius, eps=self.eps) >= self.threshold
        return RefineResult(mask=refined, score=mask_agreement(refined, mask))

    def __repr__(self) -> str:
        return f"GuidedRefiner(radius={self.radius}, eps={self.eps}, threshold={self.threshold})"
