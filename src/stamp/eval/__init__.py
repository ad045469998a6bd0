"""Evaluation: segmentation metrics (cIoU, gIoU, precision@t, N-acc, T-acc) and VQA accuracy."""

from stamp.eval.metrics import (
    PRECISION_TENTHS,
    SegMetrics,
    VQAAccuracy,
    mask_iou_stats,
    normalize_answer,
)

__all__ = ["PRECISION_TENTHS", "SegMetrics", "VQAAccuracy", "mask_iou_stats", "normalize_answer"]
