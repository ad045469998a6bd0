"""Refinement of STAMP's per-cell masks: bilinear and image-guided upsampling, SAM refinement."""

from stamp.refine.guided import default_radius, guided_upsample
from stamp.refine.upsample import upsample_probs

__all__ = ["default_radius", "guided_upsample", "upsample_probs"]
