"""The STAMP authors' SAM refinement, as their RefCOCO evaluation runs it (`--refine sam-authors:PATH`).

Reproduced from their public code (HKUST-LongGroup/STAMP: `eval/eval_refer_seg.py`, `eval/utils.py`
`compute_logits_from_mask` and `masks_sample_points`, `model/segment_anything/predictor.py`), for one
thresholded coarse mask M (H, W) of an image:
  1. mask prompt: M as 0 / 255 uint8, resized (PIL bilinear, longest side -> m = 256 for SAM's 1024
     frame, sides rounded as int(x * scale + 0.5)) and padded bottom/right to m x m; divided by 255,
     1 -> 1 - eps, 0 -> eps (eps = 1e-3), then the logit: about +-6.9, edge pixels in between. Their
     padding asks for -1 on a uint8 array, which wraps to 255: the padding becomes "object" (+6.9).
     A coarse mask already m x m skips the resize and divides its 0 / 1 values by 255 (logits -6.9 and
     -5.5): their quirk, kept too.
  2. points: 10 positives drawn uniformly without replacement among the pixels of M and 10 negatives
     among the pixels outside it (a random permutation of the raster-order candidates, its first 10;
     fewer when there are fewer pixels), as (x, y) pixel indices.
  3. one SAM pass with points + mask prompt, `multimask_output=False` (SAM's first mask token), no box;
  4. two more passes with the same points, the previous pass's low-resolution logits as the mask prompt.
The final pass's mask (logit > 0 after SAM's upsampling) is the result. An empty M is returned as is
(they skip SAM for it).

Deliberate differences from their code:
  - Their points come from the unseeded global torch RNG, so two runs differ. Here a fresh
    `torch.Generator` is seeded from `seed` on every call (positives drawn first, then negatives, from
    the same stream); with the same seed the points equal theirs after `torch.manual_seed(seed)`.
  - Their mask size is hard-coded 256; here it is the model's mask-input size (256 for every released
    SAM v1, so nothing changes for them; smaller test models work too).
  - They catch any exception and score an empty mask; here errors propagate.
  - `fix_padding=True` (not the default) pads the mask prompt with eps (logit -6.9, "not the object"),
    which is what their comment "need to pad with zero" meant. The default keeps the +6.9 padding
    because the point of this refiner is to reproduce their numbers.

How it differs from the project's own `sam` refiner (`stamp.refine.sam.SamRefiner` with
`stamp.refine.prompts`), and why the project's refiner does it differently:
  - Points: theirs are 10 + 10 uniformly random pixels; random positives near the blocky (28 px cell)
    mask's edge and negatives just outside it often sit on the wrong side of the true boundary. The
    project takes 3 deterministic positives deep inside the mask and negatives at least one STAMP cell
    away on confident background (cell probability <= 0.2).
  - Box: theirs has none; the project adds the coarse mask's bounding box.
  - Mask prompt: theirs is the binary mask (+-6.9) with +6.9 padding, which tells SAM that the padding
    below / right of a non-square image is object; the project uses the cell probabilities as logits
    and a strongly negative padding, reset again before every feedback pass.
  - Output: theirs takes SAM's single-mask output; the project takes the 3 multimask candidates and keeps
    the one agreeing best with the coarse mask, and falls back to the coarse mask when SAM's final mask
    agrees with it less than `min_agreement`. Theirs never falls back.
  - Inputs: theirs reads only the thresholded mask (their evaluation thresholds cells at logit 0 and
    upsamples with nearest, so pass that mask for their numbers); the project's also reads the cell
    probabilities.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from stamp.refine.base import RefineError, RefineResult, check_refine_inputs, mask_agreement, to_rgb_image
from stamp.refine.prompts import SamFrame
from stamp.refine.sam import SamBase

AUTHORS_POINTS = 10  # positives and negatives each (their np.random.randint(10, 11))
AUTHORS_PASSES = 2  # feedback passes after the first
AUTHORS_EPS = 1e-3


@dataclass
class AuthorsTrace:
    """Everything one run of the authors' procedure used and produced.

    Attributes:
        points_xy: (N, 2) float64 x, y in original pixels; labels: (N,) int64, 1 positive / 0 negative.
        mask_input: (1, 1, m, m) float32 mask prompt of the first pass.
        low_res: per pass, (1, m, m) float32 low-resolution logits (the first pass, then the feedback ones).
        iou: (1,) float32 SAM's predicted IoU of the last pass.
        mask: (H, W) bool final mask.
    """

    points_xy: np.ndarray
    labels: np.ndarray
    mask_input: torch.Tensor
    low_res: list[torch.Tensor]
    iou: torch.Tensor
    mask: np.ndarray


class SamAuthorsRefiner(SamBase):
    """The authors' SAM refinement of a thresholded coarse mask (see the module docstring for the
    procedure, where it deliberately differs from theirs, and how it differs from `SamRefiner`).

    Args:
        model_dir: an original segment-anything checkpoint file (`sam_vit_h_4b8939.pth`, as they use) or
            a transformers SAM (v1) directory. Nothing is downloaded.
        device: torch device for SAM.
        seed: seeds the point sampling; each call re-seeds, so equal inputs give equal masks.
        n_points: positives and negatives each (theirs: 10).
        passes: feedback passes after the first (theirs: 2).
        fix_padding: pad the mask prompt with "not the object" instead of their accidental "object".
    """

    def __init__(
        self,
        model_dir: str | os.PathLike,
        device: str | torch.device = "cpu",
        seed: int = 0,
        *,
        n_points: int = AUTHORS_POINTS,
        passes: int = AUTHORS_PASSES,
        fix_padding: bool = False,
    ) -> None:
        super().__init__(model_dir, device)
        if self.model_type != "sam":
            raise RefineError(
                f"refiner 'sam-authors' needs a SAM v1 model (their procedure letterboxes), got {self.model_type!r}"
            )
        self.seed, self.n_points, self.passes = int(seed), int(n_points), int(passes)
        self.fix_padding = bool(fix_padding)

    def mask_prompt(self, coarse_mask: np.ndarray) -> torch.Tensor:
        """(1, 1, m, m) float32 mask prompt for an (H, W) bool mask (`authors_mask_prompt`)."""
        return authors_mask_prompt(coarse_mask, self.mask_input_size, fix_padding=self.fix_padding)

    def sample_points(
        self, coarse_mask: np.ndarray, seed: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Their random points for an (H, W) bool mask, seeded by `seed` (default: the refiner's)."""
        seed = self.seed if seed is None else int(seed)
        return authors_points(coarse_mask, self.n_points, torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def run(
        self, image: Image.Image | np.ndarray, coarse_mask: np.ndarray, *, seed: int | None = None
    ) -> AuthorsTrace:
        """The procedure on a non-empty (H, W) bool `coarse_mask`, with all intermediate tensors."""
        rgb = to_rgb_image(image)
        mask = np.asarray(coarse_mask).astype(bool, copy=False)
        if mask.shape != (rgb.height, rgb.width):
            raise ValueError(
                f"coarse_mask shape {mask.shape} does not match the image size {(rgb.height, rgb.width)}"
            )
        if not mask.any():
            raise ValueError("coarse_mask is empty: the authors' procedure needs a non-empty mask")
        frame = self.frame(mask.shape)
        points_xy, labels = self.sample_points(mask, seed)
        points = torch.from_numpy(frame.transform_coords(points_xy))[None, None]  # (1, 1, N, 2)
        point_labels = torch.from_numpy(labels)[None, None]  # (1, 1, N)
        mask_input = self.mask_prompt(mask)
        embeddings = self._embed(rgb)
        low_res, history, prompt = None, [], mask_input
        for _ in range(1 + self.passes):
            low_res, iou = self._predict(
                embeddings, points=points, labels=point_labels, boxes=None, masks=prompt, multimask=False
            )
            history.append(low_res)
            prompt = low_res[None]  # (1, 1, m, m): fed back as it is, padding included
        final = self.postprocess(low_res, frame)[0]
        return AuthorsTrace(points_xy, labels, mask_input, history, iou, final)

    def refine(
        self,
        image: Image.Image | np.ndarray,
        coarse_probs: np.ndarray,
        coarse_mask: np.ndarray,
        *,
        seed: int | None = None,
    ) -> RefineResult:
        """Refine one thresholded coarse mask; `coarse_probs` is only validated (they do not use it).

        Args:
            image: PIL image (any mode; converted to RGB) or (H, W, 3) uint8 array.
            coarse_probs: (gh, gw) float probabilities covering the whole image.
            coarse_mask: (H, W) bool coarse mask at the original size (their evaluation: cells cut at
                logit 0, nearest upsampling).
            seed: the point-sampling seed of this call (default: the refiner's `seed`).

        Returns:
            RefineResult with an (H, W) bool mask and its IoU with the coarse mask; never a fallback.
        """
        rgb = to_rgb_image(image)
        _, mask = check_refine_inputs(rgb, coarse_probs, coarse_mask)
        if not mask.any():
            return RefineResult(mask=mask.copy(), score=1.0)
        refined = self.run(rgb, mask, seed=seed).mask
        return RefineResult(mask=refined, score=mask_agreement(refined, mask))

    def __repr__(self) -> str:
        return (
            f"SamAuthorsRefiner({str(self.model_dir)!r}, seed={self.seed}, n_points={self.n_points}, "
            f"passes={self.passes}, fix_padding={self.fix_padding}, device={str(self.device)!r})"
        )


def authors_mask_prompt(
    mask: np.ndarray, size: int, *, eps: float = AUTHORS_EPS, fix_padding: bool = False
) -> torch.Tensor:
    """Their mask prompt (`compute_logits_from_mask`) for an (H, W) bool mask: (1, 1, size, size) float32.

    The mask as 0 / 255 is resized with PIL bilinear so its longest side is `size` and padded
    bottom/right with 255 (their -1 on uint8; 0 with `fix_padding`), scaled to [0, 1], 0 and 1 moved to
    eps and 1 - eps, and turned into logits. A mask already size x size is not resized: its 0 / 1
    values are divided by 255 as they are (their code does the same).
    """
    mask = np.asarray(mask).astype(bool, copy=False)
    if mask.shape == (size, size):
        p = mask.astype(np.float32) / 255.0
    else:
        h, w = SamFrame.letterbox(mask.shape, size).resized_size
        image = Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), mode="L")
        canvas = np.full((size, size), 0 if fix_padding else 255, dtype=np.uint8)
        canvas[:h, :w] = np.asarray(image.resize((w, h), Image.BILINEAR))
        p = canvas / 255.0
    p[p >= 1] = 1 - eps
    p[p == 0] = eps
    return torch.from_numpy(np.log(p / (1 - p)).astype(np.float32))[None, None]


def authors_points(mask: np.ndarray, n: int, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Their random points (`masks_sample_points`) for an (H, W) bool mask.

    Positives: the first `n` of a random permutation (from `generator`) of the mask's pixels in raster
    order; negatives: the same among the pixels outside it, drawn after the positives.

    Returns:
        ((P + Q, 2) float64 x, y pixel indices, (P + Q,) int64 labels: P ones, then Q zeros).
    """
    mask = np.asarray(mask).astype(bool, copy=False)
    width = mask.shape[1]
    picks = []
    for region in (mask, ~mask):
        index = torch.from_numpy(np.flatnonzero(region))  # raster order, as masked_select gives
        picks.append(index[torch.randperm(index.numel(), generator=generator)[:n]].numpy())
    flat = np.concatenate(picks)
    points = np.stack([flat % width, flat // width], axis=1).astype(np.float64)
    labels = np.concatenate([np.ones(len(picks[0])), np.zeros(len(picks[1]))]).astype(np.int64)
    return points, labels
