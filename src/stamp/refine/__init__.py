"""Refinement of STAMP's per-cell masks: bilinear and image-guided upsampling, SAM refinement.

`build_refiner("none" | "guided" | "sam:PATH" | "sam-authors:PATH")` returns an object with
`refine(image, coarse_probs, coarse_mask) -> RefineResult`. PATH: a transformers SAM directory or an
original segment-anything checkpoint file (`sam_vit_h_4b8939.pth`).
"""

from stamp.refine.base import (
    GuidedRefiner,
    NoRefiner,
    RefineError,
    Refiner,
    RefineResult,
    mask_agreement,
)
from stamp.refine.factory import build_refiner, check_refine_source
from stamp.refine.guided import default_radius, guided_upsample
from stamp.refine.prompts import SamFrame, SamPrompts, build_prompts, mask_box, mask_prompt, select_points
from stamp.refine.sam import SamRefiner
from stamp.refine.sam_authors import SamAuthorsRefiner
from stamp.refine.sam_checkpoint import load_original_sam
from stamp.refine.upsample import upsample_probs

__all__ = [
    "GuidedRefiner",
    "NoRefiner",
    "RefineError",
    "RefineResult",
    "Refiner",
    "SamFrame",
    "SamAuthorsRefiner",
    "SamPrompts",
    "SamRefiner",
    "build_prompts",
    "build_refiner",
    "check_refine_source",
    "default_radius",
    "guided_upsample",
    "load_original_sam",
    "mask_agreement",
    "mask_box",
    "mask_prompt",
    "select_points",
    "upsample_probs",
]
