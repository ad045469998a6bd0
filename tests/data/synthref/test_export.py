"""SynthRef exports in the real formats round-trip through the loaders, pixel for pixel."""

from __future__ import annotations

import numpy as np
import pytest

from stamp.data import (
    DataError,
    load_grefer,
    load_llava,
    load_reasonseg,
    load_refer,
)
from stamp.data.synthref import SynthRef, export_synthref
from stamp.data.synthref.export import EXPORT_TASK_WEIGHTS

N = 8


def _source(fmt: str, split: str = "val") -> SynthRef:
    return SynthRef(
        split, seed=0, task_weights=EXPORT_TASK_WEIGHTS[fmt], min_visible=1.0 if fmt == "reasonseg" else 0.6
    )


def test_refer_export_round_trip(tmp_path) -> None:
    out = export_synthref(tmp_path / "refer", "val", N, "refer", progress=False)
    ds, src = load_refer(out, dataset="refcoco", split="val"), _source("refer")  # RefCOCO's LISA layout
    assert len(ds) == N
    for i in range(N):
        loaded, original = ds[i], src.generate(i)
        assert loaded.meta["expression"] == original.meta["expression"]
        np.testing.assert_array_equal(loaded.masks[0], original.masks[0])
        np.testing.assert_array_equal(
            np.asarray(loaded.load_image()), np.asarray(original.image)
        )  # PNG: lossless
        assert loaded.turns[0].text.count(original.meta["expression"]) == 1


def test_grefer_export_round_trip(tmp_path) -> None:
    out = export_synthref(tmp_path / "g", "test", 3 * N, "grefer", progress=False)
    ds, src = load_grefer(out, "test"), _source("grefer", "test")
    assert len(ds) == 3 * N
    kinds = set()
    for i in range(3 * N):
        loaded, original = ds[i], src.generate(i)
        assert loaded.meta["no_target"] == original.meta["no_target"]
        kinds.add((loaded.meta["no_target"], len(loaded.meta["ann_ids"]) > 1))
        np.testing.assert_array_equal(loaded.masks[0], original.masks[0])
    assert kinds == {(True, False), (False, False), (False, True)}  # none, single and several targets


def test_reasonseg_export_round_trip(tmp_path) -> None:
    out = export_synthref(tmp_path / "r", "val", N, "reasonseg", progress=False)
    ds, src = load_reasonseg(out, "val"), _source("reasonseg")
    assert len(ds) == N
    for i in range(N):
        loaded, original = ds[i], src.generate(i)
        assert loaded.meta["is_sentence"] == original.meta["is_sentence"]
        np.testing.assert_array_equal(loaded.masks[0], original.masks[0])


def test_llava_export_round_trip(tmp_path) -> None:
    out = export_synthref(tmp_path / "l", "val", N, "llava", progress=False)
    # the image paths in the file are relative to its folder
    ds, src = load_llava(out / "conversations.json", out), _source("llava")
    for i in range(N):
        loaded, original = ds[i], src.generate(i)
        assert [(t.role, t.text) for t in loaded.turns] == [(t.role, t.text) for t in original.turns]
        assert loaded.meta["answer"] == original.meta["answer"]


def test_export_refuses_to_overwrite(tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()  # an existing empty folder is fine
    export_synthref(out, "val", 2, "llava", progress=False)
    with pytest.raises(DataError, match="output exists and is not empty: .*out"):
        export_synthref(out, "val", 2, "refer", progress=False)
    export_synthref(out, "val", 2, "refer", overwrite=True, progress=False)
    assert (out / "refcoco" / "refs(unc).p").is_file() and not (out / "conversations.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary folders left behind


def test_export_argument_errors_leave_nothing(tmp_path) -> None:
    with pytest.raises(DataError, match="unknown export format"):
        export_synthref(tmp_path / "x", "val", 2, "coco")
    with pytest.raises(DataError, match="unknown SynthRef split"):
        export_synthref(tmp_path / "x", "dev", 2, "refer")
    assert list(tmp_path.iterdir()) == []


def test_synthref_takes_no_path() -> None:
    """`synthref:PATH` would silently ignore PATH: it is an error naming the kinds that read exports."""
    from stamp.data.registry import parse_data_spec

    assert parse_data_spec("synthref") == ("synthref", None)
    with pytest.raises(DataError, match="refcoco:/data/x"):
        parse_data_spec("synthref:/data/x")
