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
