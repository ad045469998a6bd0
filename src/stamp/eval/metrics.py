"""Segmentation and VQA metrics, following the definitions shared by LISA, GSVA, ReLA and Text4Seg.

Segmentation (per expression, after resizing the prediction to the original image size):
    I = |pred AND gt|, U = |pred OR gt| over pixels whose ground truth is not 255 (ignore);
    IoU = I / U, and IoU = 1 when U == 0 (an empty prediction on an empty target).
    gIoU = mean per-expression IoU; cIoU = sum(I) / sum(U) over the split.
    precision@t = fraction of ALL expressions (targets and no-targets alike) with IoU >= t.
gRefCOCO (ReLA's definition; "no-target predicted" = empty predicted mask, or the model declined):
    N-acc = share of no-target expressions predicted as no-target;
    T-acc = share of expressions with a target for which a non-empty mask was predicted.
All reported numbers are percentages in [0, 100].

Accumulators are plain counters, so shards from several processes combine exactly with `merge()` or
through `state_dict()` / `from_state()` (e.g. after `torch.distributed.all_gather_object`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

IGNORE_VALUE = 255
# Thresholds in tenths so that "IoU >= t" is decided exactly with integers: 10 * I >= k * U.
PRECISION_TENTHS: tuple[int, ...] = (5, 6, 7, 8, 9)


def mask_iou_stats(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int]:
    """Intersection and union of a predicted mask with a ground-truth mask, ignoring gt == 255.

    Args:
        pred: (H, W) bool predicted mask (any dtype is accepted; non-zero means foreground).
        gt: (H, W) uint8 ground truth: 0 background, 1 foreground, 255 ignore.

    Returns:
        (intersection, union) as Python ints, counted over the pixels whose gt is not 255.

    Raises:
        ValueError: if the shapes differ, the arrays are not 2-D, or gt holds values other than 0/1/255.
    """
    pred = np.asarray(pred)
    gt = np.asarray(gt)
    if pred.ndim != 2 or gt.ndim != 2:
        raise ValueError(f"masks must be 2-D (H, W); got pred {pred.shape}, gt {gt.shape}")
    if pred.shape != gt.shape:
        raise ValueError(f"prediction shape {pred.shape} does not match ground truth shape {gt.shape}")
    if ((gt > 1) & (gt != IGNORE_VALUE)).any():
        raise ValueError("ground truth must hold only 0, 1 and 255 (ignore)")
    pred_fg = pred.astype(bool, copy=False)
    valid = gt != IGNORE_VALUE
    gt_fg = gt == 1
    pred_valid = pred_fg & valid
    intersection = int(np.count_nonzero(pred_valid & gt_fg))
    union = int(np.count_nonzero(pred_valid | gt_fg))
    return intersection, union


@dataclass
class SegMetrics:
    """Streaming accumulator for cIoU, gIoU, precision@{0.5..0.9}, N-acc and T-acc.

    Feed one `update()` per expression. `compute()` returns percentages (0-100):
    `ciou`, `giou`, `precision@0.5` ... `precision@0.9` and `n_samples`; plus `n_acc` and `t_acc`
    when a no-target sample was seen or `generalized=True` (then a ratio with no samples is NaN).
    When nothing was accumulated, or every union is 0, cIoU is 100 (all empty-vs-empty).

    Example:
        >>> m = SegMetrics()
        >>> m.update(*mask_iou_stats(pred, gt), has_target=True, predicted_nonempty=bool(pred.any()))
        >>> m.compute()["ciou"]
    """

    generalized: bool = False
    n_samples: int = 0
    sum_intersection: int = 0
    sum_union: int = 0
    sum_iou: float = 0.0
    precision_hits: dict[int, int] = field(default_factory=lambda: {k: 0 for k in PRECISION_TENTHS})
    n_no_target: int = 0
    n_no_target_correct: int = 0
    n_target: int = 0
    n_target_correct: int = 0

    def update(
        self,
        intersection: int,
        union: int,
        *,
        has_target: bool,
        predicted_nonempty: bool,
        declined: bool = False,
    ) -> None:
        """Add one expression.

        Args:
            intersection, union: from `mask_iou_stats`. When the model declined to emit a mask, pass the
                stats of an empty prediction (I = 0, U = foreground pixels of the ground truth).
            has_target: the ground truth has at least one foreground pixel (False: gRefCOCO no-target).
            predicted_nonempty: the predicted mask has at least one foreground pixel.
            declined: the model answered without a mask (counts as "no-target predicted").
        """
        intersection, union = int(intersection), int(union)
        if intersection < 0 or union < 0 or intersection > union:
            raise ValueError(f"need 0 <= intersection <= union, got I={intersection}, U={union}")
        if declined and predicted_nonempty:
            raise ValueError("a declined sample cannot have a non-empty prediction")
        if not has_target and intersection > 0:
            raise ValueError("a no-target sample cannot have a positive intersection")
        self.n_samples += 1
        self.sum_intersection += intersection
        self.sum_union += union
        self.sum_iou += 1.0 if union == 0 else intersection / union
        for k in PRECISION_TENTHS:
            if 10 * intersection >= k * union:
                self.precision_hits[k] += 1
        predicted_no_target = declined or not predicted_nonempty
        if has_target:
            self.n_target += 1
            self.n_target_correct += int(not predicted_no_target)
        else:
            self.n_no_target += 1
            self.n_no_target_correct += int(predicted_no_target)

    def compute(self) -> dict[str, float]:
        """Percentages (0-100) for the accumulated samples; see the class docstring for the keys."""
        n = self.n_samples
        out: dict[str, float] = {
            "ciou": 100.0 if self.sum_union == 0 else 100.0 * self.sum_intersection / self.sum_union,
            "giou": _percent(self.sum_iou, n),
        }
        for k in PRECISION_TENTHS:
            out[f"precision@0.{k}"] = _percent(self.precision_hits[k], n)
        if self.generalized or self.n_no_target > 0:
            out["n_acc"] = _percent(self.n_no_target_correct, self.n_no_target)
            out["t_acc"] = _percent(self.n_target_correct, self.n_target)
        out["n_samples"] = n
        return out

    def merge(self, other: SegMetrics) -> SegMetrics:
        """Add `other`'s counts into this accumulator (in place) and return self."""
        self.generalized = self.generalized or other.generalized
        self.n_samples += other.n_samples
        self.sum_intersection += other.sum_intersection
        self.sum_union += other.sum_union
        self.sum_iou += other.sum_iou
        for k in PRECISION_TENTHS:
            self.precision_hits[k] += other.precision_hits[k]
        self.n_no_target += other.n_no_target
        self.n_no_target_correct += other.n_no_target_correct
        self.n_target += other.n_target
        self.n_target_correct += other.n_target_correct
        return self

    def state_dict(self) -> dict[str, Any]:
        """The counters as a flat dict of plain numbers (picklable / JSON-able, for gathering)."""
        state: dict[str, Any] = {
            "generalized": bool(self.generalized),
            "n_samples": self.n_samples,
            "sum_intersection": self.sum_intersection,
            "sum_union": self.sum_union,
            "sum_iou": self.sum_iou,
            "n_no_target": self.n_no_target,
            "n_no_target_correct": self.n_no_target_correct,
            "n_target": self.n_target,
            "n_target_correct": self.n_target_correct,
        }
        for k in PRECISION_TENTHS:
            state[f"precision_hits_{k}"] = self.precision_hits[k]
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SegMetrics:
        """Rebuild an accumulator from `state_dict()` output."""
        hits = {k: int(state[f"precision_hits_{k}"]) for k in PRECISION_TENTHS}
        return cls(
            generalized=bool(state["generalized"]),
            n_samples=int(state["n_samples"]),
            sum_intersection=int(state["sum_intersection"]),
            sum_union=int(state["sum_union"]),
            sum_iou=float(state["sum_iou"]),
            precision_hits=hits,
            n_no_target=int(state["n_no_target"]),
            n_no_target_correct=int(state["n_no_target_correct"]),
            n_target=int(state["n_target"]),
            n_target_correct=int(state["n_target_correct"]),
        )


def _percent(numerator: float, denominator: int) -> float:
    return math.nan if denominator == 0 else 100.0 * numerator / denominator


# --------------------------------------------------------------------------------------------- VQA

_NUMBER_WORDS = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
    "seven": "7", "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12",
    "thirteen": "13", "fourteen": "14", "fifteen": "15", "sixteen": "16", "seventeen": "17",
    "eighteen": "18", "nineteen": "19", "twenty": "20", "thirty": "30", "forty": "40",
    "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80", "ninety": "90", "hundred": "100",
}  # fmt: skip
_ARTICLES = frozenset({"a", "an", "the"})
_DECIMAL_POINT = re.compile(r"(?<=\d)\.(?=\d)")
_PUNCTUATION = re.compile(r"[^\w\s]|_")


def normalize_answer(text: str) -> str:
    """Normalise a short answer for exact matching.

    Lowercase; apostrophes dropped ("don't" -> "dont"); other punctuation becomes a space, except a
    decimal point between digits ("3.5" stays); articles a/an/the removed; number words -> digits
    ("three" -> "3"); whitespace collapsed.

    >>> normalize_answer("  The Three dogs!")
    '3 dogs'
    """
    text = text.lower().replace("'", "").replace("\u2019", "")
    text = _DECIMAL_POINT.sub("DOT", text)  # upper case cannot occur after lower(): a safe marker
    text = _PUNCTUATION.sub(" ", text).replace("DOT", ".")
    words = [_NUMBER_WORDS.get(w, w) for w in text.split() if w not in _ARTICLES]
    return " ".join(words)


@dataclass
class VQAAccuracy:
    """Exact-match accuracy (percent) of normalised answers; a prediction matching any reference counts."""

    n_samples: int = 0
    n_correct: int = 0

    def update(self, prediction: str, answers: str | list[str]) -> bool:
        """Score one answer against one or several references; returns whether it matched."""
        refs = [answers] if isinstance(answers, str) else list(answers)
        if not refs:
            raise ValueError("need at least one reference answer")
        pred = normalize_answer(prediction)
        correct = any(pred == normalize_answer(r) for r in refs)
        self.n_samples += 1
        self.n_correct += int(correct)
        return correct

    def compute(self) -> dict[str, float]:
        """{"vqa_acc": percent (NaN when empty), "n_samples": count}."""
        return {"vqa_acc": _percent(self.n_correct, self.n_samples), "n_samples": self.n_samples}

    def merge(self, other: VQAAccuracy) -> VQAAccuracy:
        """Add `other`'s counts into this accumulator (in place) and return self."""
        self.n_samples += other.n_samples
        self.n_correct += other.n_correct
        return self

    def state_dict(self) -> dict[str, int]:
        """The counters as a dict of ints."""
        return {"n_samples": self.n_samples, "n_correct": self.n_correct}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> VQAAccuracy:
        """Rebuild an accumulator from `state_dict()` output."""
        return cls(n_samples=int(state["n_samples"]), n_correct=int(state["n_correct"]))
