"""Atomic output writes: complete files only, and the permissions any plainly created file would get."""

import errno
import os

from stamp.bench.report import write_json
from stamp.outputs.files import atomic_write_bytes, new_file_mode


def test_atomic_writes_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "mask.png", b"png")
        write_json({"a": 1}, tmp_path / "bench.json")
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(old)
    want = plain.stat().st_mode & 0o777
    assert want == 0o644
    for name in ("mask.png", "bench.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == want, name  # not mkstemp's 0o600
    assert (tmp_path / "mask.png").read_bytes() == b"png"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary files left


def test_new_file_mode_follows_the_umask():
    old = os.umask(0o077)
    try:
        assert new_file_mode() == 0o600
    finally:
        os.umask(old)


def test_new_dir_mode_is_what_mkdir_gives(tmp_path):
    from stamp.filemodes import new_dir_mode

    old = os.umask(0o022)
    try:
        (tmp_path / "plain").mkdir()
        assert new_dir_mode() == (tmp_path / "plain").stat().st_mode & 0o777 == 0o755
    finally:
        os.umask(old)


def test_overlay_outlines_show_on_a_background_of_the_masks_colour():
    """A mask on a region of its own colour still shows: a dark line runs just outside its edge."""
    import numpy as np
    from PIL import Image

    from stamp.outputs.files import HALO, PALETTE, overlay_masks

    image = Image.new("RGB", (40, 30), PALETTE[0])  # the first mask's colour everywhere
    mask = np.zeros((30, 40), bool)
    mask[10:20, 10:25] = True
    out = np.asarray(overlay_masks(image, [mask]))
    ring = np.zeros_like(mask)
    ring[9:21, 9:26] = True
    ring &= ~mask
    ring[9, 9] = ring[9, 25] = ring[20, 9] = ring[20, 25] = False  # 4-neighbours only: no corners
    assert (out[ring] == HALO).all()
    assert (out[~ring] == PALETTE[0]).all()  # inside and far outside: the colour, unchanged


def test_overlay_file_has_a_legend_with_index_and_phrase(tmp_path):
    import numpy as np
    from PIL import Image

    from stamp.inference.predictor import StampMask, StampResult
    from stamp.outputs.files import PALETTE, legend_labels, result_to_dict, write_result

    masks = []
    for k in range(2):
        m = np.zeros((30, 40), bool)
        m[5 + 10 * k : 12 + 10 * k, 5:20] = True
        masks.append(StampMask(m, m.astype(np.float32), np.zeros((2, 3), np.float32), 0.9))
    result = StampResult("The cat <|seg|> and the dog <|seg|>.", masks)
    assert legend_labels(result_to_dict(result)["masks"]) == [(0, "0: The cat"), (1, "1: the dog")]
    write_result(result, Image.new("RGB", (40, 30), (255, 255, 255)), tmp_path)
    overlay = np.asarray(Image.open(tmp_path / "overlay.png"))
    assert overlay.shape[0] > 30 + 2 * 12  # a legend row per mask below the image
    legend = overlay[30:].reshape(-1, 3)
    for colour in PALETTE[:2]:  # each mask's swatch
        assert (legend == colour).all(-1).any()


def test_records_know_the_models_seg_token():
    from stamp.model import tokens
    from stamp.outputs import records

    assert records.SEG_TOKEN == tokens.SEG_TOKEN


def test_result_json_says_why_the_answer_ended(tmp_path):
    import json

    from PIL import Image

    from stamp.inference.generation import FINISH_REASONS
    from stamp.inference.predictor import StampResult
    from stamp.outputs import records
    from stamp.outputs.files import write_result

    assert records.FINISH_REASONS == FINISH_REASONS
    for reason in FINISH_REASONS:
        out = tmp_path / reason
        write_result(StampResult("blue blue", finish_reason=reason), Image.new("RGB", (8, 8)), out)
        assert json.loads((out / "result.json").read_text())["finish_reason"] == reason
        warning = records.finish_warning(reason, 128)
        assert (warning is None) == (reason == "eos")
        assert warning is None or ("\n" not in warning and "128 tokens" in warning)


def _result(text, areas, prompt=None, shape=(30, 40)):
    """A StampResult with one mask per area: `area` pixels of a band (0: an empty mask)."""
    import numpy as np

    from stamp.inference.predictor import StampMask, StampResult

    masks = []
    for k, area in enumerate(areas):
        m = np.zeros(shape, bool)
        m.reshape(-1)[:area] = True
        masks.append(StampMask(m, m.astype(np.float32), np.zeros((2, 3), np.float32), 0.9, index=k))
    return StampResult(text, masks, {"vision": 0.1, "decode": 0.2, "postprocess": 0.01}, prompt=prompt)


def _strict(text: str):
    """json.loads that refuses NaN / Infinity (as JavaScript's JSON.parse does)."""
    import json

    def refuse(word):
        raise ValueError(f"not JSON: {word}")

    return json.loads(text, parse_constant=refuse)


def test_json_documents_write_undefined_numbers_as_null(tmp_path):
    """NaN and inf become null in every JSON written: results, bench reports, server events."""

    import numpy as np

    from stamp.outputs.files import write_json
    from stamp.outputs.jsondoc import dumps

    doc = {"t_acc": float("nan"), "x": [np.float32("inf"), -np.inf, 1.5], "n": np.int64(3), "t": (1, 2)}
    write_json(tmp_path / "r.json", doc)
    assert _strict((tmp_path / "r.json").read_text()) == {
        "t_acc": None,
        "x": [None, None, 1.5],
        "n": 3,
        "t": [1, 2],
    }
    assert _strict(dumps(doc)) == _strict((tmp_path / "r.json").read_text())
    from stamp.bench.report import write_json as write_bench_json

    write_bench_json({"tokens_per_s": float("nan")}, tmp_path / "bench.json")  # was a ValueError
    assert _strict((tmp_path / "bench.json").read_text()) == {"tokens_per_s": None}
    from stamp.serve.stream import sse

    assert _strict(sse("done", {"score": float("nan")}).split("data: ")[1]) == {"score": None}


def test_force_replaces_the_whole_result_and_a_failure_leaves_the_old_one(tmp_path, monkeypatch):
    import json

    import pytest
    from PIL import Image

    import stamp.outputs.files as files
    from stamp.faults import WriteError

    image, out = Image.new("RGB", (40, 30)), tmp_path / "out"
    files.write_result(_result("A <|seg|> and B <|seg|>.", [50, 60]), image, out)
    assert sorted(p.name for p in out.iterdir()) == ["mask_0.png", "mask_1.png", "overlay.png", "result.json"]
    with pytest.raises(FileExistsError, match="--force"):
        files.write_result(_result("none", []), image, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def broken(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "_png_bytes", broken)  # fails half-way through writing the new result
    with pytest.raises(WriteError, match="no space left on device .* the earlier result is untouched"):
        files.write_result(_result("X <|seg|>.", [5]), image, out, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no partial folder left
    monkeypatch.undo()
    files.write_result(_result("none", []), image, out, force=True)
    assert sorted(p.name for p in out.iterdir()) == ["overlay.png", "result.json"]  # no stale masks
    assert json.loads((out / "result.json").read_text())["masks"] == []
    (out / "notes.txt").write_text("mine")  # --force replaces a result, never the user's own files
    with pytest.raises(FileExistsError, match="notes.txt"):
        files.write_result(_result("none", []), image, out, force=True)


def test_result_to_dict_is_result_json_and_masks_know_index_phrase_and_rle(tmp_path):
    import json

    import numpy as np
    from PIL import Image
    from pycocotools import mask as mask_utils

    from stamp.outputs.files import write_result
    from stamp.outputs.records import MASK_RECORD_KEYS

    result = _result("The cat <|seg|> and the dog <|seg|>.", [50, 0], prompt="Segment the pets.")
    doc = result.to_dict()
    assert _strict(json.dumps(doc)) == doc  # JSON-ready as it is
    write_result(result, Image.new("RGB", (40, 30)), tmp_path / "r", extra={"image": "in.png"})
    on_disk = json.loads((tmp_path / "r" / "result.json").read_text())
    for m in on_disk["masks"]:
        assert m.pop("file") == f"mask_{m['index']}.png"
    assert {k: v for k, v in on_disk.items() if k != "image"} == {
        **doc,
        "masks": [{k: v for k, v in m.items() if k != "file"} for m in doc["masks"]],
    }
    assert set(doc["masks"][0]) == set(MASK_RECORD_KEYS) and doc["prompt"] == "Segment the pets."
    for k, m in enumerate(result.masks):
        assert m.index == k and m.rle == doc["masks"][k]["rle"] and isinstance(m.rle["counts"], str)
        decoded = mask_utils.decode({**m.rle, "counts": m.rle["counts"].encode()})
        assert np.array_equal(decoded.astype(bool), m.mask)


def test_a_mask_the_answer_does_not_name_is_named_by_the_request():
    from stamp.outputs.records import asked_phrase, mask_phrase

    ask = "Please segment the red circle."
    assert mask_phrase("Sure, it is <|seg|>.", 0, ask) == "the red circle"
    assert mask_phrase("Here is the segmentation result <|seg|>.", 0, ask) == "the red circle"
    assert mask_phrase("<|seg|>", 0, ask) == "the red circle"
    assert mask_phrase("The cat <|seg|> and the dog <|seg|>.", 1, ask) == "the dog"  # named: kept
    assert mask_phrase("Sure, it is <|seg|>.", 0) == "it"  # no request known: the answer's words
    assert asked_phrase("Can you find the blue square in the image?") == "the blue square"
    assert asked_phrase("What holds water? Please output the segmentation mask.") == "What holds water"


def test_legend_leaves_empty_masks_out_and_keeps_each_masks_colour(tmp_path):
    import numpy as np
    from PIL import Image

    from stamp.outputs.files import PALETTE, legend_labels, result_to_dict, write_result

    result = _result("Sure, <|seg|> and the dog <|seg|>.", [0, 80], prompt="Segment the cat and the dog.")
    assert legend_labels(result_to_dict(result)["masks"]) == [(1, "1: the dog")]
    write_result(result, Image.new("RGB", (40, 30), (255, 255, 255)), tmp_path)
    legend = np.asarray(Image.open(tmp_path / "overlay.png"))[30:].reshape(-1, 3)
    assert (legend == PALETTE[1]).all(-1).any() and not (legend == PALETTE[0]).all(-1).any()
