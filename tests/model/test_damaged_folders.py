"""A damaged or incomplete model folder is one line naming the file, exit 2, before any work: truncated
weights, invalid JSON, a missing tokenizer, in the CLI and the Python API alike."""

import shutil

import pytest
from PIL import Image

from stamp.cli import main
from stamp.model.loading import SHIPPED_MODELS_DIR, StampModelError
from stamp.model.modeling import StampModel
from stamp.processing import StampProcessor


def _truncate(folder, keep):
    f = folder / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: keep if keep > 0 else len(data) // 2])
    return "model.safetensors"


def _bad_json(name):
    def damage(folder):
        (folder / name).write_text('{"model_type": "qwen2_vl", ')
        return name

    return damage


def _no_tokenizer(folder):
    for f in folder.glob("tokenizer*"):
        f.unlink()
    return "no tokenizer"


DAMAGES = {
    "weights-header": lambda d: _truncate(d, 1000),
    "weights-half": lambda d: _truncate(d, 0),
    "config": _bad_json("config.json"),
    "processor": _bad_json("stamp_processor.json"),
    "tokenizer": _no_tokenizer,
}


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    path = tmp_path_factory.mktemp("img") / "red.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(path)
    return path


@pytest.mark.parametrize("kind", sorted(DAMAGES))
def test_damaged_folder_is_one_line(kind, tmp_path, image, capsys):
    folder = tmp_path / "model"
    shutil.copytree(SHIPPED_MODELS_DIR / "tiny-synth", folder)
    named = DAMAGES[kind](folder)
    out = tmp_path / "out"
    assert (
        main(["segment", str(image), "--prompt", "Segment it.", "--model", str(folder), "--out", str(out)])
        == 2
    )
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("stamp: note:")]
    assert len(lines) == 1 and lines[0].startswith("stamp: error: ") and named in lines[0], err
    assert "Traceback" not in err and not out.exists()
    with pytest.raises(StampModelError, match=named):
        StampModel.from_pretrained(folder)
        StampProcessor.from_pretrained(folder)


def test_a_model_that_cannot_fit_is_refused_before_loading(tmp_path, image, monkeypatch, capsys):
    """The weights' size (from the safetensors headers, in the dtype asked for) against the memory the
    device has free: one line before anything is loaded, instead of the process being killed."""
    import torch

    import stamp.model.loading as loading

    folder = SHIPPED_MODELS_DIR / "tiny-synth"
    need32 = loading.weight_bytes(folder, torch.float32)
    assert need32 == 2 * loading.weight_bytes(folder) == 2 * loading.weight_bytes(folder, torch.bfloat16)
    monkeypatch.setattr(loading, "available_bytes", lambda device: need32 - 1)
    with pytest.raises(StampModelError, match=r"need about .* GiB in float32 but cpu has .* GiB free"):
        StampModel.from_pretrained("tiny-synth")
    StampModel.from_pretrained("tiny-synth", dtype="bfloat16")  # half the size fits
    out = tmp_path / "out"
    assert main(["segment", str(image), "--prompt", "x", "--out", str(out)]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("stamp: note:")]
    assert len(lines) == 1 and "GiB free" in lines[0] and not out.exists()
