"""Deterministic SAM prompts from a coarse STAMP mask: points, box and a low-resolution mask prompt.

Frames. SAM (v1) resizes the longest image side to `target` (1024) and pads right/bottom to a square;
SAM 2 stretches the image to target x target. `SamFrame` records the mapping; point and box coordinates
are given to SAM in that frame (x, y pixel indices, SAM adds the half-pixel itself).

Points. The coarse mask is reduced to a work grid of f x f pixel blocks (long side <= `POINT_GRID`);
a block is foreground only if all its pixels are, background only if none is, so a block's centre pixel
always has the block's label. Positives are the deepest foreground blocks (chessboard distance to
background), spread apart by greedy suppression. Negatives are confident background: blocks at least
one STAMP cell away from the mask whose cell probability is low, nearest to the object first, spread
around it. Ties are broken by a seeded permutation, so the same inputs always give the same points.

Mask prompt. Probabilities upsampled bilinearly to the resized image, turned into clipped logits,
placed in the square frame whose padding is a large NEGATIVE logit (the authors' code let the padding
wrap to +255), then area-averaged to SAM's mask-input size (256 for a 1024 frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from stamp.refine.upsample import upsample_probs

POINT_GRID = 128  # long side of the work grid for point selection
NEG_MAX_PROB = 0.2  # a negative point's cell probability must be at most this


@dataclass(frozen=True)
class SamFrame:
    """How an (H, W) image maps into SAM's square `target` x `target` input.

    Attributes:
        orig_size: (H, W) of the original image.
        resized_size: (h, w) of the image inside the frame (the rest, bottom/right, is padding).
        target: side of the square frame (1024 for the released models).
    """

    orig_size: tuple[int, int]
    resized_size: tuple[int, int]
    target: int

    @classmethod
    def letterbox(cls, orig_size: tuple[int, int], target: int) -> SamFrame:
        """SAM v1: longest side -> target, aspect kept, rounded as SAM does (int(x * scale + 0.5))."""
        height, width = orig_size
        scale = target / max(height, width)
        return cls((height, width), (int(height * scale + 0.5), int(width * scale + 0.5)), target)

    @classmethod
    def stretch(cls, orig_size: tuple[int, int], target: int) -> SamFrame:
        """SAM 2: the image is resized to target x target (no padding)."""
        return cls((orig_size[0], orig_size[1]), (target, target), target)

    def transform_coords(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) float x, y in original pixels -> (N, 2) float32 x, y in the frame."""
        sx = self.resized_size[1] / self.orig_size[1]
        sy = self.resized_size[0] / self.orig_size[0]
        return (np.asarray(xy, dtype=np.float64).reshape(-1, 2) * np.array([sx, sy])).astype(np.float32)


@dataclass
class SamPrompts:
    """Prompts for one coarse mask, in original pixels and as SAM model inputs.

    Attributes:
        points_xy: (N, 2) float32 x, y in original pixels; labels: (N,) int64, 1 positive / 0 negative.
        box_xyxy: (4,) float32 x0, y0, x1, y1 (inclusive pixel indices) in original pixels.
        frame: the image -> SAM frame mapping.
        input_points: (1, 1, N, 2) float32 frame coordinates; input_labels: (1, 1, N) int64.
        input_boxes: (1, 1, 4) float32 frame coordinates.
        input_masks: (1, 1, m, m) float32 mask-prompt logits (m = 256 for a 1024 frame).
    """

    points_xy: np.ndarray
    labels: np.ndarray
    box_xyxy: np.ndarray
    frame: SamFrame
    input_points: torch.Tensor
    input_labels: torch.Tensor
    input_boxes: torch.Tensor
    input_masks: torch.Tensor


def build_prompts(
    coarse_probs: np.ndarray,
    coarse_mask: np.ndarray,
    frame: SamFrame,
    mask_input_size: int,
    *,
    n_points: int,
    seed: int = 0,
    pad_logit: float = -20.0,
) -> SamPrompts:
    """All prompts for a non-empty (H, W) bool `coarse_mask` and its (gh, gw) `coarse_probs`."""
    points_xy, labels = select_points(coarse_probs, coarse_mask, n_points, n_points, seed=seed)
    box = mask_box(coarse_mask)
    return SamPrompts(
        points_xy=points_xy,
        labels=labels,
        box_xyxy=box,
        frame=frame,
        input_points=torch.from_numpy(frame.transform_coords(points_xy))[None, None],
        input_labels=torch.from_numpy(labels)[None, None],
        input_boxes=torch.from_numpy(frame.transform_coords(box.reshape(2, 2)).reshape(4))[None, None],
        input_masks=mask_prompt(coarse_probs, frame, mask_input_size, pad_logit=pad_logit),
    )


def mask_box(mask: np.ndarray) -> np.ndarray:
    """(4,) float32 x0, y0, x1, y1 bounding box (inclusive pixel indices) of a non-empty (H, W) mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise ValueError("mask is empty: no bounding box")
    return np.array([cols[0], rows[0], cols[-1], rows[-1]], dtype=np.float32)


def mask_prompt(
    coarse_probs: np.ndarray, frame: SamFrame, size: int, *, pad_logit: float = -20.0, clip: float = 1e-3
) -> torch.Tensor:
    """(1, 1, size, size) float32 logits: probabilities in the frame, NEGATIVE padding, area-resized.

    Probabilities are clipped to [clip, 1 - clip] before the logit (|logit| <= 6.9 by default).
    """
    h, w = frame.resized_size
    p = np.clip(upsample_probs(coarse_probs, (h, w)), clip, 1.0 - clip)  # (h, w) in the frame
    canvas = torch.full((frame.target, frame.target), float(pad_logit))
    canvas[:h, :w] = torch.from_numpy(np.log(p) - np.log1p(-p))
    return F.interpolate(canvas[None, None], size=(size, size), mode="area")


def select_points(
    coarse_probs: np.ndarray, coarse_mask: np.ndarray, n_pos: int, n_neg: int, *, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic positive / negative points: ((N, 2) float32 x, y in pixels, (N,) int64 labels).

    Positives lie inside `coarse_mask`; negatives outside it, at least one STAMP cell away, on cells
    whose probability is <= NEG_MAX_PROB. Fewer points are returned when there are no candidates.
    """
    height, width = coarse_mask.shape
    f = max(1, math.ceil(max(height, width) / POINT_GRID))
    fg, bg, centres = _block_reduce(coarse_mask, f)  # (gy, gx) bool, bool, (gy, gx, 2) x, y pixels
    probs = upsample_probs(coarse_probs, fg.shape)  # (gy, gx) cell probability at each block
    tie = np.random.default_rng(seed).permutation(fg.size).reshape(fg.shape)
    fg_depth = _chessboard_depth(fg)
    n_fg = max(int(fg.sum()), 1)
    obj_radius = math.sqrt(n_fg / math.pi)

    sep = max(2.0, float(fg_depth.max()), 0.5 * math.sqrt(n_fg / max(n_pos, 1)))
    pos = _greedy_spread(fg, (-fg_depth, -probs, tie), n_pos, sep)
    pos_xy = centres[pos[:, 0], pos[:, 1]] if len(pos) else _fallback_positive(coarse_mask, n_pos)

    cell_px = max(height / coarse_probs.shape[0], width / coarse_probs.shape[1])
    margin = max(2, math.ceil(cell_px / f))  # one STAMP cell, in blocks
    bg_depth = _chessboard_depth(bg)
    neg_ok = bg & (bg_depth >= margin) & (probs <= NEG_MAX_PROB)
    neg = _greedy_spread(neg_ok, (bg_depth, probs, tie), n_neg, max(2.0, obj_radius))
    neg_xy = centres[neg[:, 0], neg[:, 1]] if len(neg) else np.zeros((0, 2))

    points = np.concatenate([pos_xy, neg_xy]).astype(np.float32)
    labels = np.concatenate([np.ones(len(pos_xy)), np.zeros(len(neg_xy))]).astype(np.int64)
    return points, labels


def _block_reduce(mask: np.ndarray, f: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blocks of f x f pixels: (all foreground, all background, centre x, y of the valid part)."""
    height, width = mask.shape
    gy, gx = math.ceil(height / f), math.ceil(width / f)
    padded = np.full((gy * f, gx * f), -1, dtype=np.int8)  # -1: padding outside the image
    padded[:height, :width] = mask
    blocks = padded.reshape(gy, f, gx, f).transpose(0, 2, 1, 3).reshape(gy, gx, f * f)
    fg = np.all(blocks != 0, axis=-1)  # padding neither makes nor breaks a block
    bg = np.all(blocks != 1, axis=-1)
    y0, x0 = np.arange(gy) * f, np.arange(gx) * f
    cy = (y0 + np.minimum(y0 + f, height) - 1) // 2  # centre pixel of the block's in-image part
    cx = (x0 + np.minimum(x0 + f, width) - 1) // 2
    centres = np.stack(np.broadcast_arrays(cx[None, :], cy[:, None]), axis=-1).astype(np.float64)
    return fg, bg, centres


def _chessboard_depth(region: np.ndarray) -> np.ndarray:
    """(gy, gx) float: number of 3x3 erosions each cell of `region` survives (0 outside the region).

    The image border does not erode (an object touching the border keeps its depth there).
    """
    cur = torch.from_numpy(region.astype(np.float32))[None, None]
    depth = torch.zeros_like(cur)
    while bool(cur.any()):
        depth += cur
        cur = -F.max_pool2d(-cur, 3, stride=1, padding=1)  # min-pool; padding is -inf -> no erosion
    return depth[0, 0].numpy()


def _greedy_spread(candidates: np.ndarray, keys: tuple[np.ndarray, ...], n: int, sep: float) -> np.ndarray:
    """Up to n (row, col) candidates in order of `keys` (ascending, first key most significant),
    each at chessboard distance >= sep from those already chosen. Returns (k, 2) int."""
    rows, cols = np.nonzero(candidates)
    if n <= 0 or rows.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    order = np.lexsort(tuple(k[rows, cols] for k in reversed(keys)))
    chosen: list[tuple[int, int]] = []
    for idx in order:
        r, c = int(rows[idx]), int(cols[idx])
        if all(max(abs(r - r2), abs(c - c2)) >= sep for r2, c2 in chosen):
            chosen.append((r, c))
            if len(chosen) == n:
                break
    return np.array(chosen, dtype=np.int64).reshape(-1, 2)


def _fallback_positive(mask: np.ndarray, n: int) -> np.ndarray:
    """For masks too thin to fill a work block: n foreground pixels evenly spaced in raster order."""
    ys, xs = np.nonzero(mask)
    picks = np.unique(np.linspace(0, ys.size - 1, num=max(n, 1)).round().astype(np.int64))
    return np.stack([xs[picks], ys[picks]], axis=-1).astype(np.float64)
