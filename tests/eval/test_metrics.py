"""Metric definitions pinned on hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stamp.eval import SegMetrics, VQAAccuracy, mask_iou_stats, normalize_answer


def _mask(shape: tuple[int, int], *boxes: tuple[int, int, int, int]) -> np.ndarray:
    m = np.zeros(shape, dtype=bool)
    for y0, y1, x0, x1 in boxes:
        m[y0:y1, x0:x1] = True
    return m


def test_empty_vs_empty_is_iou_one():
    pred = np.zeros((4, 5), dtype=bool)
    gt = np.zeros((4, 5), dtype=np.uint8)
    assert mask_iou_stats(pred, gt) == (0, 0)
    m = SegMetrics()
    m.update(0, 0, has_target=False, predicted_nonempty=False)
    out = m.compute()
    assert out["giou"] == 100.0 and out["ciou"] == 100.0 and out["precision@0.9"] == 100.0


def test_ignore_pixels_are_excluded():
    gt = np.array([[1, 1, 255, 0], [0, 255, 255, 0]], dtype=np.uint8)
    pred = np.array([[1, 0, 1, 1], [0, 1, 1, 0]], dtype=bool)
    # valid pixels: (0,0) I, (0,1) gt only, (0,3) pred only -> I=1, U=3; the 255s never count.
    assert mask_iou_stats(pred, gt) == (1, 3)


def test_shape_and_value_errors():
    with pytest.raises(ValueError, match="shape"):
        mask_iou_stats(np.zeros((2, 3), bool), np.zeros((3, 2), np.uint8))
    with pytest.raises(ValueError, match="0, 1 and 255"):
        mask_iou_stats(np.zeros((2, 2), bool), np.full((2, 2), 7, np.uint8))
    m = SegMetrics()
    with pytest.raises(ValueError):
        m.update(3, 2, has_target=True, predicted_nonempty=True)
    with pytest.raises(ValueError):
        m.update(0, 2, has_target=True, predicted_nonempty=True, declined=True)


def test_ciou_differs_from_giou():
    # Sample A: large object, I=90 U=100 (IoU 0.9). Sample B: small object, I=1 U=10 (IoU 0.1).
    gt_a = _mask((20, 20), (0, 10, 0, 10)).astype(np.uint8)  # 100 px
    pred_a = _mask((20, 20), (0, 9, 0, 10))  # 90 px inside
    gt_b = _mask((10, 10), (0, 2, 0, 5)).astype(np.uint8)  # 10 px
    pred_b = _mask((10, 10), (0, 1, 0, 1))  # 1 px inside
    assert mask_iou_stats(pred_a, gt_a) == (90, 100)
    assert mask_iou_stats(pred_b, gt_b) == (1, 10)
    m = SegMetrics()
    m.update(90, 100, has_target=True, predicted_nonempty=True)
    m.update(1, 10, has_target=True, predicted_nonempty=True)
    out = m.compute()
    assert out["ciou"] == pytest.approx(100 * 91 / 110)  # 82.73
    assert out["giou"] == pytest.approx(100 * (0.9 + 0.1) / 2)  # 50.0
    assert out["n_samples"] == 2
    assert "n_acc" not in out and "t_acc" not in out


def test_precision_thresholds_inclusive():
    m = SegMetrics()
    for i, u in [(5, 10), (6, 10), (7, 10), (8, 10), (9, 10)]:  # IoU exactly 0.5 ... 0.9
        m.update(i, u, has_target=True, predicted_nonempty=True)
    m.update(0, 4, has_target=True, predicted_nonempty=False)  # IoU 0
    out = m.compute()
    assert out["precision@0.5"] == pytest.approx(100 * 5 / 6)
    assert out["precision@0.6"] == pytest.approx(100 * 4 / 6)
    assert out["precision@0.7"] == pytest.approx(100 * 3 / 6)
    assert out["precision@0.8"] == pytest.approx(100 * 2 / 6)
    assert out["precision@0.9"] == pytest.approx(100 * 1 / 6)


def test_nacc_tacc_bookkeeping():
    m = SegMetrics()
    m.update(0, 0, has_target=False, predicted_nonempty=False)  # no-target, empty: correct, IoU 1
    m.update(0, 0, has_target=False, predicted_nonempty=False, declined=True)  # declined: correct
    m.update(0, 7, has_target=False, predicted_nonempty=True)  # no-target with a mask: wrong, IoU 0
    m.update(0, 5, has_target=True, predicted_nonempty=False)  # target, empty: wrong, IoU 0
    m.update(4, 5, has_target=True, predicted_nonempty=True)  # target, mask: correct, IoU 0.8
    out = m.compute()
    assert out["n_acc"] == pytest.approx(100 * 2 / 3)
    assert out["t_acc"] == pytest.approx(50.0)
    assert out["giou"] == pytest.approx(100 * (1 + 1 + 0 + 0 + 0.8) / 5)
    assert out["ciou"] == pytest.approx(100 * 4 / 17)
    assert out["n_samples"] == 5


def test_generalized_flag_always_reports_accs():
    m = SegMetrics(generalized=True)
    m.update(3, 4, has_target=True, predicted_nonempty=True)
    out = m.compute()
    assert math.isnan(out["n_acc"]) and out["t_acc"] == 100.0


def test_merge_and_state_roundtrip_equal_single_accumulator():
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(40):
        has_target = bool(rng.random() < 0.7)
        u = int(rng.integers(0, 50))
        i = int(rng.integers(0, u + 1)) if has_target else 0
        samples.append((i, u, has_target, bool(u > i or i > 0)))
    single, a, b = SegMetrics(), SegMetrics(), SegMetrics()
    for k, (i, u, t, ne) in enumerate(samples):
        single.update(i, u, has_target=t, predicted_nonempty=ne)
        (a if k % 3 else b).update(i, u, has_target=t, predicted_nonempty=ne)
    merged = SegMetrics.from_state(a.state_dict()).merge(SegMetrics.from_state(b.state_dict()))
    assert merged.compute() == pytest.approx(single.compute(), nan_ok=True)
    assert all(isinstance(v, (int, float, bool)) for v in single.state_dict().values())


def test_vqa_normalisation():
    assert normalize_answer("Three") == "3"
    assert normalize_answer("  The red Car. ") == "red car"
    assert normalize_answer("an apple") == "apple"
    assert normalize_answer("Don't know!") == "dont know"
    assert normalize_answer("3.5 meters") == "3.5 meters"
    assert normalize_answer("t-shirt") == "t shirt"
    acc = VQAAccuracy()
    assert acc.update("Two.", "2")
    assert acc.update("a dog", ["cat", "the dog"])
    assert not acc.update("yes", "no")
    out = acc.compute()
    assert out["vqa_acc"] == pytest.approx(100 * 2 / 3) and out["n_samples"] == 3
    other = VQAAccuracy.from_state(acc.state_dict())
    assert acc.merge(other).compute()["n_samples"] == 6
