"""ReasonSeg loader on a fixture in the real layout, masks checked against numpy-drawn expectations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from datafixtures import write_image

from stamp.data import IGNORE_INDEX, SEG_TOKEN, DataError, load_reasonseg


def _rect(x0: float, y0: float, x1: float, y1: float) -> list[list[float]]:
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def _write(root: Path, name: str, record: dict, size: tuple[int, int] = (48, 32)) -> None:
    write_image(root / "val" / f"{name}.jpg", size)
    (root / "val" / f"{name}.json").write_text(json.dumps(record))


@pytest.fixture()
def reason_root(tmp_path: Path) -> Path:
    shapes = [
        {"label": "target", "points": _rect(30, 20, 33, 24)},  # small, drawn last: 1 inside the ignore region
        {"label": "flag", "points": _rect(0, 0, 47, 31)},  # skipped entirely
        {"label": "target", "points": _rect(2.7, 2.2, 20.9, 15.5)},  # truncated to (2, 2)-(20, 15), inclusive
        {"label": "ignore_1", "points": _rect(25, 18, 40, 28)},
        {"label": "target", "points": _rect(5, 5, 8, 8)},
    ]
    _write(
        tmp_path, "a", {"text": ["What could hold water?", "second"], "is_sentence": True, "shapes": shapes}
    )
    _write(
        tmp_path,
        "b",
        {
            "text": ["the cup"],
            "is_sentence": False,
            "shapes": [{"label": "cup", "points": _rect(1, 1, 3, 2)}],
        },
    )
    (tmp_path / "train").mkdir()
    return tmp_path


def test_reasonseg_masks_order_ignore_and_flag(reason_root: Path) -> None:
    ds = load_reasonseg(reason_root, "val")
    assert len(ds) == 2
    a = ds[0]
    expected = np.zeros((32, 48), np.uint8)
    expected[2:16, 2:21] = 1
    expected[18:29, 25:41] = IGNORE_INDEX
    expected[20:25, 30:34] = 1
    np.testing.assert_array_equal(a.masks[0], expected)
    assert a.task == "reason" and a.meta["is_sentence"]
    assert a.turns[0].text == "What could hold water? Please output segmentation mask."
    assert a.turns[1].text == f"Sure, it is {SEG_TOKEN}."
    b = ds[1]
    expected_b = np.zeros((32, 48), np.uint8)
    expected_b[1:3, 1:4] = 1
    np.testing.assert_array_equal(b.masks[0], expected_b)
    assert b.turns[0].text == "What is the cup in this image? Please output segmentation mask."


def test_reasonseg_all_texts(reason_root: Path) -> None:
    ds = load_reasonseg(reason_root, "val", all_texts=True)
    assert [s.meta["expression"] for s in ds] == ["What could hold water?", "second", "the cup"]
    assert len({s.id for s in ds}) == 3


def test_reasonseg_errors(reason_root: Path) -> None:
    with pytest.raises(DataError, match="ReasonSeg split folder not found: .*test; available: train, val"):
        load_reasonseg(reason_root, "test")
    with pytest.raises(DataError, match="no ReasonSeg annotations"):
        load_reasonseg(reason_root, "train")
    with pytest.raises(DataError, match="ReasonSeg root not found"):
        load_reasonseg(reason_root / "missing", "val")
    (reason_root / "val" / "b.jpg").unlink()
    with pytest.raises(DataError, match=r"image not found: .*b\.jpg"):
        load_reasonseg(reason_root, "val")[1]
    (reason_root / "val" / "a.json").write_text('{"text": []}')
    with pytest.raises(DataError, match=r"corrupt ReasonSeg annotation .*a\.json"):
        load_reasonseg(reason_root, "val")
