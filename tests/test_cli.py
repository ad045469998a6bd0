"""The `stamp` command: help, segment outputs, no clobbering, one-line errors with exit code 2."""

import json
import subprocess
import sys

import numpy as np
import pytest
from helpers import random_image
from PIL import Image

from stamp.cli import main


def test_help_runs():
    out = subprocess.run([sys.executable, "-m", "stamp.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "segment" in out.stdout and "demo" in out.stdout


def test_segment_writes_outputs_and_refuses_overwrite(tmp_path, capsys):
    img = tmp_path / "in.png"
    random_image(120, 160).save(img)
    out = tmp_path / "out"
    argv = [
        "segment",
        str(img),
        "--prompt",
        "Segment it.",
        "--out",
        str(out),
        "--answer-prefix",
        "<|seg|>",
        "--max-new-tokens",
        "3",
    ]
    assert main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["text"].startswith("<|seg|>") and len(result["masks"]) == 1
    entry = result["masks"][0]
    assert entry["rle"]["size"] == [120, 160] and {"area", "bbox", "score", "file"} <= set(entry)
    mask_png = np.asarray(Image.open(out / "mask_0.png"))
    assert mask_png.shape == (120, 160) and set(np.unique(mask_png)) <= {0, 255}
    assert int((mask_png > 0).sum()) == entry["area"]
    before = (out / "result.json").read_bytes()
    assert main(argv) == 2  # exists: refused, nothing touched
    assert "already exists" in capsys.readouterr().err
    assert (out / "result.json").read_bytes() == before
    assert main(argv + ["--force"]) == 0


def test_errors_are_one_line_exit_2(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_text("not an image")
    cases = [
        (
            ["segment", str(tmp_path / "missing.png"), "--prompt", "x", "--out", str(tmp_path / "o")],
            "not found",
        ),
        (["segment", str(bad), "--prompt", "x", "--out", str(tmp_path / "o")], "not an image"),
        (["segment", str(bad), "--prompt", "x", "--out", str(tmp_path / "o"), "--model", str(tmp_path)], ""),
    ]
    for argv, needle in cases:
        proc = subprocess.run([sys.executable, "-m", "stamp.cli", *argv], capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr
        err_lines = [ln for ln in proc.stderr.strip().splitlines() if ln.startswith("stamp: error")]
        assert len(err_lines) == 1 and needle in err_lines[0]
        assert "Traceback" not in proc.stderr


def test_missing_model_dir_is_clean_error(tmp_path):
    img = tmp_path / "in.png"
    random_image(64, 64).save(img)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "stamp.cli",
            "segment",
            str(img),
            "--prompt",
            "x",
            "--out",
            str(tmp_path / "o"),
            "--model",
            str(tmp_path / "nope"),
        ],
        capture_output=True,
        text=True,
    )
    assert (
        proc.returncode == 2 and "model directory not found" in proc.stderr and "Traceback" not in proc.stderr
    )


def test_typo_suggests_command():
    proc = subprocess.run([sys.executable, "-m", "stamp.cli", "segmnt"], capture_output=True, text=True)
    assert proc.returncode == 2 and "did you mean segment" in proc.stderr


def test_demo_runs_and_writes_overlay(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "stamp.cli", "demo", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "answer:" in proc.stdout and "timings" in proc.stdout
    assert (out / "overlay.png").is_file() and (out / "result.json").is_file()
    if "RANDOM" in proc.stderr:  # no bundled model in this checkout: the demo must say so
        assert "meaningless" in proc.stderr
    before = (out / "result.json").read_bytes()
    again = subprocess.run(
        [sys.executable, "-m", "stamp.cli", "demo", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    # refused before the model runs (no answers printed), nothing touched
    assert again.returncode == 2 and "already exists" in again.stderr and "answer:" not in again.stdout
    assert (out / "result.json").read_bytes() == before


def test_data_synth_cli(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), "--split", "val", "--n", "3", "--format", "llava"]) == 0
    assert (out / "conversations.json").is_file()
    assert main(["data", "synth", "--out", str(out), "--split", "val", "--n", "3", "--format", "llava"]) == 2
    assert "exists" in capsys.readouterr().err


def test_segment_cells_sets_the_resolution(tmp_path):
    """--cells MIN,MAX overrides the checkpoint's sizing (min = max fixes the cell count)."""
    img = tmp_path / "in.png"
    random_image(120, 160).save(img)
    base = ["segment", str(img), "--prompt", "Segment it.", "--answer-prefix", "<|seg|>"]
    grids = {}
    for cells in ("12,12", "48,48"):
        out = tmp_path / cells.replace(",", "_")
        assert main(base + ["--max-new-tokens", "2", "--out", str(out), "--cells", cells]) == 0
        gh, gw = json.loads((out / "result.json").read_text())["masks"][0]["grid"]
        grids[cells] = gh * gw
    assert grids == {"12,12": 12, "48,48": 48}
    with pytest.raises(SystemExit) as bad:  # argparse: one line, exit 2, before any model loads
        main(base + ["--out", str(tmp_path / "bad"), "--cells", "9,3"])
    assert bad.value.code == 2
