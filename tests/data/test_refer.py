"""Refer-format and gRefCOCO loaders on fixtures written in the real on-disk layout."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from datafixtures import COCO_DIR, GREFS, IMAGE_SIZES, coco_file_name

from stamp.data import SEG_TOKEN, DataError, load_grefer, load_refer
from stamp.data.refer import default_image_root


def test_refer_val_one_sample_per_sentence(coco_root: Path, expected_masks: dict) -> None:
    ds = load_refer(coco_root, "refcoco", "val")
    assert len(ds) == 3
    by_sentence = {s.meta["expression"]: s for s in ds}
    assert set(by_sentence) == {"left box", "the square", "the l shape"}
    for text, ann_id in (("left box", 10), ("the square", 10), ("the l shape", 11)):
        sample = by_sentence[text]
        assert sample.task == "refer" and sample.meta["ann_id"] == ann_id
        assert len(sample.masks) == 1 and sample.masks[0].dtype == np.uint8
        np.testing.assert_array_equal(sample.masks[0], expected_masks[ann_id])
        assert text in sample.turns[0].text and sample.turns[0].role == "user"
        assert sample.turns[1].text == f"Sure, it is {SEG_TOKEN}."
        assert sample.load_image().size == IMAGE_SIZES[1]
    assert by_sentence["left box"].id == "refcoco/val/100"


def test_refer_polygons_of_two_parts_and_other_split(coco_root: Path, expected_masks: dict) -> None:
    ds = load_refer(coco_root, "refcoco", "testA")
    assert len(ds) == 1
    np.testing.assert_array_equal(ds[0].masks[0], expected_masks[12])


def test_refer_template_seed_is_deterministic(coco_root: Path) -> None:
    a = [s.turns[0].text for s in load_refer(coco_root, "refcoco", "val", template_seed=3)]
    b = [s.turns[0].text for s in load_refer(coco_root, "refcoco", "val", template_seed=3)]
    assert a == b


def test_refcocog_defaults_to_umd(coco_root: Path) -> None:
    ds = load_refer(coco_root, "refcocog", "val")
    assert ds.refs_path.name == "refs(umd).p" and len(ds) == 3


def test_default_image_roots(tmp_path: Path) -> None:
    assert default_image_root(tmp_path, "refcoco") == tmp_path / COCO_DIR
    assert default_image_root(tmp_path, "refclef") == tmp_path / "images" / "saiapr_tc-12"


def test_refer_errors_name_the_path(coco_root: Path) -> None:
    with pytest.raises(DataError, match="dataset folder not found: .*nowhere"):
        load_refer(coco_root / "nowhere", "refcoco", "val")
    with pytest.raises(
        DataError, match=r"split 'testC' not found in .*refs\(unc\)\.p; available: testA, train, val"
    ):
        load_refer(coco_root, "refcoco", "testC")
    (coco_root / COCO_DIR / coco_file_name(1)).unlink()
    ds = load_refer(coco_root, "refcoco", "val")
    with pytest.raises(DataError, match=f"image not found: .*{coco_file_name(1)}"):
        ds[0]
    with pytest.raises(DataError, match="refs.*not found"):
        load_refer(coco_root, "refcoco", "val", split_by="google")


def test_refer_corrupt_annotations(coco_root: Path) -> None:
    (coco_root / "refcoco" / "instances.json").write_text("{not json")
    with pytest.raises(DataError, match="corrupt instances file .*instances.json"):
        load_refer(coco_root, "refcoco", "val")
    refs = [{"ref_id": 9, "ann_id": 999, "image_id": 1, "split": "val", "sentences": []}]
    (coco_root / "refcocog" / "refs(umd).p").write_bytes(pickle.dumps(refs))
    with pytest.raises(DataError, match=r"corrupt refs file .*refs\(umd\)\.p: ref 9 points to ann 999"):
        load_refer(coco_root, "refcocog", "val")
    (coco_root / "refcocog" / "refs(umd).p").write_bytes(b"\x80\x02]q\x00(")  # truncated
    with pytest.raises(DataError, match="corrupt pickle"):
        load_refer(coco_root, "refcocog", "val")


def test_grefer_union_crowd_and_no_target(coco_root: Path, expected_masks: dict) -> None:
    ds = load_grefer(coco_root, "val")
    assert len(ds) == 3
    samples = {s.meta["expression"]: s for s in ds}
    both = samples["both things"]
    np.testing.assert_array_equal(both.masks[0], expected_masks[10] | expected_masks[11])
    assert not both.meta["no_target"] and both.task == "grefer"
    crowd = samples["squares and crowd"]
    np.testing.assert_array_equal(crowd.masks[0], expected_masks[12])  # the crowd annotation is skipped
    none = samples["the giraffe"]
    assert none.meta["no_target"] and none.meta["ann_ids"] == []
    w, h = IMAGE_SIZES[2]
    assert len(none.masks) == 1 and none.masks[0].shape == (h, w) and not none.masks[0].any()
    assert SEG_TOKEN in none.turns[1].text and "no" in none.turns[1].text.lower()


def test_grefer_no_target_without_seg(coco_root: Path) -> None:
    ds = load_grefer(coco_root, "val", no_target_emits_seg=False)
    none = next(s for s in ds if s.meta["no_target"])
    assert none.masks == [] and SEG_TOKEN not in none.turns[1].text
    assert "no such object" in none.turns[1].text


def test_grefer_pickle_variant_and_missing_split(coco_root: Path) -> None:
    folder = coco_root / "grefcoco"
    (folder / "grefs(unc).json").unlink()
    with open(folder / "grefs(unc).p", "wb") as f:
        pickle.dump(GREFS, f)
    assert len(load_grefer(coco_root, "testB")) == 1
    with pytest.raises(DataError, match=r"split 'train' not found in .*grefs\(unc\)\.p"):
        load_grefer(coco_root, "train")
