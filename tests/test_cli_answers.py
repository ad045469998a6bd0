"""Honest answers on the command line: result.json says why the answer ended, stderr warns when it was
cut off or looped and says when the bundled model is in use, `--no-repetition-stop` lets a loop run
on, and an over-long prompt is one line and exit 2 before any model work."""

import json

import pytest
from helpers import LoopingHead, random_image

from stamp.cli import build_parser, main
from stamp.inference.generation import REPEAT_MIN_TOKENS
from stamp.tiny import build_tiny_model


@pytest.fixture
def looping_model(monkeypatch):
    """`stamp.processing.load_model_and_processor` gives a tiny model that says "x" forever; its forwards are counted."""
    import stamp.processing

    model, processor = build_tiny_model(seed=0)
    model.lm_head = LoopingHead(model.lm_head, processor._text_ids("x")[0])
    model.forwards = 0

    def count(*args):
        model.forwards += 1

    model.model.language_model.register_forward_hook(count)
    model.model.visual.register_forward_hook(count)
    monkeypatch.setattr(stamp.processing, "load_model_and_processor", lambda *a, **k: (model, processor))
    return model


def _segment(tmp_path, name, *extra):
    img = tmp_path / "in.png"
    if not img.exists():
        random_image(64, 64).save(img)
    out = tmp_path / name
    return ["segment", str(img), "--out", str(out), *extra], out


def test_a_loop_is_stopped_and_reported(tmp_path, looping_model, capsys):
    argv, out = _segment(tmp_path, "loop", "--prompt", "Talk.", "--max-new-tokens", "100")
    assert main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["finish_reason"] == "repetition" and result["text"] == "x" * REPEAT_MIN_TOKENS
    err = capsys.readouterr().err
    assert err.count("stamp: warning:") == 1 and "repeating itself" in err
    argv, out = _segment(
        tmp_path, "free", "--prompt", "Talk.", "--max-new-tokens", "50", "--no-repetition-stop"
    )
    assert main(argv) == 0
    result = json.loads((out / "result.json").read_text())
    assert result["finish_reason"] == "length" and result["text"] == "x" * 50
    err = capsys.readouterr().err
    assert err.count("stamp: warning:") == 1 and "token limit (50 tokens)" in err


def test_several_images_summary_has_the_reason(tmp_path, looping_model, capsys):
    photos = tmp_path / "photos"
    photos.mkdir()
    for k in range(2):
        random_image(40, 50, k).save(photos / f"p{k}.png")
    out = tmp_path / "many"
    argv = ["segment", str(photos), "--prompt", "Talk.", "--max-new-tokens", "3", "--out", str(out)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [im["finish_reason"] for im in summary["images"]] == ["length", "length"]
    assert capsys.readouterr().err.count("stamp: warning:") == 2


def test_long_prompt_is_one_line_exit_2_before_model_work(tmp_path, looping_model, capsys):
    argv, out = _segment(tmp_path, "long", "--prompt", "Please segment the red circle. " * 2000)
    assert main(argv) == 2
    err = "".join(
        line for line in capsys.readouterr().err.splitlines(True) if not line.startswith("stamp: note:")
    )
    assert err.startswith("stamp: error: ") and err.count("\n") == 1 and "the limit is 8192 tokens" in err
    assert looping_model.forwards == 0 and not (out / "result.json").exists()


@pytest.mark.parametrize("command", ["segment", "demo", "eval", "serve", "web"])
def test_no_repetition_stop_flag(command):
    parser = build_parser()
    base = {
        "segment": ["segment", "a.png", "--prompt", "x", "--out", "o"],
        "demo": ["demo"],
        "eval": ["eval", "--data", "synthref"],
        "serve": ["serve"],
        "web": ["web"],
    }[command]
    assert parser.parse_args(base).no_repetition_stop is False
    assert parser.parse_args(base + ["--no-repetition-stop"]).no_repetition_stop is True


def test_eval_passes_the_switch_and_names_the_bundled_model(monkeypatch, capsys):
    import stamp.eval.runner
    from stamp.model.loading import shipped_model_names

    jobs = []

    def fake(job, **kwargs):
        jobs.append(job)
        return {"metrics": {}, "n_samples": 0, "n_expressions": 0}

    monkeypatch.setattr(stamp.eval.runner, "run_eval", fake)
    assert main(["eval", "--data", "synthref", "--no-repetition-stop"]) == 0
    assert jobs[0].repetition_stop is False
    err = capsys.readouterr().err
    assert ("synthetic shapes" in err) == ("tiny-synth" in shipped_model_names())


def test_bundled_model_says_what_it_is(tmp_path, capsys):
    from stamp.model.loading import shipped_model_names

    if "tiny-synth" not in shipped_model_names():
        pytest.skip("no bundled model in this installation")
    argv, out = _segment(
        tmp_path, "b", "--prompt", "Segment it.", "--answer-prefix", "x", "--max-new-tokens", "0"
    )
    assert main(argv) == 0
    err = capsys.readouterr().err
    notes = [line for line in err.splitlines() if line.startswith("stamp: note:")]
    assert len(notes) == 1 and "synthetic shapes" in notes[0] and "--model DIR" in notes[0]
    assert "token limit" in err  # the answer stopped at its budget of 0 free tokens
    assert json.loads((out / "result.json").read_text())["finish_reason"] == "length"
