"""What the command line refuses before any model loads, and how: one line on stderr, exit 2."""

import pytest
from helpers import random_image

import stamp.cli.segment
from stamp.cli import main


def _no_model(*args, **kwargs):
    raise AssertionError("the model was loaded before the arguments were checked")


def test_argument_error_is_one_line(capsys):
    """No usage block before the error: one line naming the command, pointing to --help."""
    with pytest.raises(SystemExit) as exit_:
        main(["segment", "a.png", "--prompt", "x", "--out", "o", "--threshold", "3"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err
    assert err.startswith("stamp segment: error: argument --threshold") and "stamp segment --help" in err


@pytest.mark.parametrize("bad", ["file_as_folder", "proc"])
def test_unwritable_out_refused_before_loading(tmp_path, monkeypatch, capsys, bad):
    img = tmp_path / "in.png"
    random_image(40, 40).save(img)
    (tmp_path / "f").write_text("")
    out = str(tmp_path / "f" / "sub") if bad == "file_as_folder" else "/proc/nope/"
    monkeypatch.setattr(stamp.cli.segment, "build_predictor", _no_model)
    assert main(["segment", str(img), "--prompt", "x", "--out", out]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stamp: error: cannot write --out") and err.count("\n") == 1
    assert not (tmp_path / "f").is_dir()


def test_out_check_leaves_nothing_behind(tmp_path):
    from stamp.cli.common import check_out_dir, check_out_file

    check_out_dir(tmp_path / "a" / "b")
    check_out_file(tmp_path / "c" / "results.json")
    assert list(tmp_path.iterdir()) == []


def test_eval_unwritable_out_refused_before_loading(tmp_path, monkeypatch, capsys):
    import stamp.eval.runner

    monkeypatch.setattr(stamp.eval.runner, "run_eval", _no_model)
    (tmp_path / "f").write_text("")
    assert main(["eval", "--data", "synthref", "--out", str(tmp_path / "f" / "r.json")]) == 2
    assert "cannot write --out" in capsys.readouterr().err


@pytest.mark.parametrize("spec", ["cuda", "cuda:3", "gpu", "cuda:x"])
def test_unavailable_or_unknown_device_is_a_usage_error(monkeypatch, capsys, spec):
    """--device cuda without CUDA: one line, exit 2, when the command line is parsed (no traceback)."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(stamp.cli.segment, "build_predictor", _no_model)
    with pytest.raises(SystemExit) as exit_:
        main(["segment", "a.png", "--prompt", "x", "--out", "o", "--device", spec])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("stamp segment: error: argument --device") and err.count("\n") == 1


def test_device_accepts_what_the_machine_has():
    from stamp.cli.args import device, device_or_auto

    assert device("CPU") == "cpu" and device_or_auto("auto") == "auto"


PARSE_ONLY = """
import contextlib, io, sys
from stamp.cli import main
for argv in (["--help"], ["segment", "--help"], ["chat", "--help"], ["segment", "a.png", "--threshold", "2"],
             ["eval", "--data"], ["train", "--help"], ["bench", "--help"], ["serve", "--help"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            main(argv)
        except SystemExit:
            pass
print(sorted(m for m in ("torch", "transformers", "accelerate", "deepspeed") if m in sys.modules))
"""


def test_help_and_usage_errors_import_no_torch():
    """`stamp --help`, a command's --help and a usage error build every parser without torch or
    transformers (what made each of them take seconds)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", PARSE_ONLY], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
