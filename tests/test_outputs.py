"""Atomic output writes: complete files only, and the permissions any plainly created file would get."""

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
    assert legend_labels(result_to_dict(result)["masks"]) == ["0: The cat", "1: the dog"]
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
