"""The `stamp` command: help, segment outputs, no clobbering, one-line errors with exit code 2."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from helpers import random_image, save_tiny_model
from PIL import Image
from safetensors.torch import load_file

from stamp.cli import build_parser, main
from stamp.model.modeling import StampModel
from stamp.tiny import build_tiny_model


def test_help_runs():
    out = subprocess.run([sys.executable, "-m", "stamp", "--help"], capture_output=True, text=True)
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
        proc = subprocess.run([sys.executable, "-m", "stamp", *argv], capture_output=True, text=True)
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
            "stamp",
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
    proc = subprocess.run([sys.executable, "-m", "stamp", "segmnt"], capture_output=True, text=True)
    assert proc.returncode == 2 and "did you mean segment" in proc.stderr


def test_demo_runs_and_writes_overlay(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "stamp", "demo", "--out", str(out)],
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
        [sys.executable, "-m", "stamp", "demo", "--out", str(out)],
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


# --------------------------------------------------------------------------- issue 23: the first hour


def _no_model(monkeypatch):
    """Make any model load fail loudly: a check that runs after it would be too late."""
    import stamp.processing

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(stamp.processing, "load_model_and_processor", refuse)


def _exit_code(argv) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's usage errors
        return exc.code


def test_argument_errors_come_before_the_model_loads(tmp_path, monkeypatch, capsys):
    _no_model(monkeypatch)
    img = tmp_path / "in.png"
    random_image(32, 32).save(img)
    a_file = tmp_path / "taken"
    a_file.write_text("x")
    (tmp_path / "empty").mkdir()
    seg = ["segment", str(img), "--prompt", "x"]
    cases = [
        (seg + ["--out", str(tmp_path / "o"), "--threshold", "1.5"], "(0, 1)"),
        (seg + ["--out", str(a_file)], "is a file"),
        (seg + ["--out", str(tmp_path / "o"), "--cells", "9,3"], "MIN <= MAX"),
        (seg + ["--out", str(tmp_path / "o"), "--refine", "bogus"], "unknown refinement"),
        (seg + ["--out", str(tmp_path / "o"), "--refine", f"sam:{tmp_path / 'no-sam'}"], "not found"),
        (["segment", str(tmp_path / "gone.png"), "--prompt", "x", "--out", str(tmp_path / "o")], "not found"),
        (
            ["segment", str(tmp_path / "empty"), "--prompt", "x", "--out", str(tmp_path / "o")],
            "no image files",
        ),
        (["demo", "--out", str(a_file)], "is a file"),
        (["eval", "--data", "synthref", "--out", str(tmp_path / "r.json"), "--threshold", "0"], "(0, 1)"),
        (["eval", "--data", "synthref", "--out", str(tmp_path / "r.json"), "--limit", "0"], ">= 1"),
        (["serve", "--threshold", "2"], "(0, 1)"),
        (["serve", "--refine", "sam"], "needs a SAM"),
    ]
    for argv, needle in cases:
        assert _exit_code(argv) == 2, argv
        err = capsys.readouterr().err
        assert needle in err, (argv, err)
        assert len([ln for ln in err.splitlines() if "error:" in ln]) == 1, err


def test_segment_several_images_and_a_folder(tmp_path, monkeypatch, capsys):
    """Several images: one folder per image and summary.json, answered in batches (chat_batch)."""
    from stamp.inference import StampPredictor

    sizes = []
    real = StampPredictor.chat_batch

    def spy(self, requests, **kwargs):
        sizes.append(len(requests))
        return real(self, requests, **kwargs)

    monkeypatch.setattr(StampPredictor, "chat_batch", spy)
    photos = tmp_path / "photos"
    photos.mkdir()
    for k, name in enumerate(("a.png", "b.png", "a.jpg")):
        random_image(40 + 8 * k, 56, seed=k).save(photos / name)
    (photos / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    argv = ["segment", str(photos), "--prompt", "Segment it.", "--answer-prefix", "<|seg|>"]
    argv += ["--max-new-tokens", "1", "--batch-size", "2", "--out", str(out)]
    assert main(argv) == 0
    assert sizes == [2, 1]
    summary = json.loads((out / "summary.json").read_text())
    assert [e["out"] for e in summary["images"]] == ["a", "a-2", "b"]  # name order; a repeated name gets -2
    for entry in summary["images"]:
        result = json.loads((out / entry["out"] / "result.json").read_text())
        assert result["image"] == entry["image"] and len(result["masks"]) == len(entry["masks"]) == 1
        # summary.json: each mask's area, score and RLE; this image's timings; the batch's apart
        mask = result["masks"][0]
        assert entry["masks"] == [{k: mask[k] for k in ("index", "phrase", "area", "score", "rle")}]
        assert entry["timings"] == result["timings"] and entry["batch"] == result["batch"]
    first, second = summary["images"][:2]  # answered in one batch of 2
    assert first["batch"] == second["batch"] and first["batch"]["size"] == 2
    shared = first["batch"]["timings"]
    for key in ("vision", "prefill", "decode"):  # each image's share: the two add up to the batch's
        assert abs(first["timings"][key] + second["timings"][key] - shared[key]) < 1e-5, key
        assert (out / entry["out"] / "overlay.png").is_file() and (
            out / entry["out"] / "mask_0.png"
        ).is_file()
    capsys.readouterr()
    assert main(argv) == 2 and "already exists" in capsys.readouterr().err  # never overwritten...
    assert main(argv + ["--force"]) == 0  # ...unless --force
    # several files given one by one: the same layout
    two = tmp_path / "two"
    assert main(["segment", str(photos / "a.png"), str(photos / "b.png")] + argv[2:-1] + [str(two)]) == 0
    assert sorted(p.name for p in two.iterdir()) == ["a", "b", "summary.json"]


def test_segment_folder_skips_an_unreadable_file_and_exits_1(tmp_path, capsys):
    """One broken file: a one-line warning, the others' results, summary.json lists it, exit status 1."""
    photos = tmp_path / "photos"
    photos.mkdir()
    random_image(40, 56).save(photos / "a.png")
    (photos / "b.png").write_bytes(b"not a png at all")
    random_image(48, 56, seed=2).save(photos / "c.png")
    out = tmp_path / "out"
    argv = ["segment", str(photos), "--prompt", "Segment it.", "--answer-prefix", "<|seg|>"]
    assert main(argv + ["--max-new-tokens", "1", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    warnings = [ln for ln in err.splitlines() if "skipping" in ln]
    assert len(warnings) == 1 and "b.png" in warnings[0] and "Traceback" not in err
    assert "1 of 3 images" in err
    summary = json.loads((out / "summary.json").read_text())
    assert [e["out"] for e in summary["images"]] == ["a", "c"]
    assert [s["image"] for s in summary["skipped"]] == [str(photos / "b.png")]
    assert (out / "a" / "result.json").is_file() and (out / "c" / "result.json").is_file()


def test_result_json_holds_the_mask_record(tmp_path):
    """result.json's masks are the shared record (the HTTP API returns the same, tests/serve)."""
    from stamp.outputs.records import MASK_RECORD_KEYS

    img = tmp_path / "in.png"
    random_image(60, 80).save(img)
    out = tmp_path / "out"
    argv = ["segment", str(img), "--prompt", "Find it.", "--answer-prefix", "The red circle <|seg|>"]
    assert main(argv + ["--max-new-tokens", "1", "--out", str(out)]) == 0
    entry = json.loads((out / "result.json").read_text())["masks"][0]
    assert set(entry) == set(MASK_RECORD_KEYS)
    assert entry["phrase"] == "The red circle" and entry["span"] == [0, 14] and entry["color"] == "#e69f00"
    assert entry["file"] == "mask_0.png"
    overlay = Image.open(out / "overlay.png")
    # the legend below the image, a row for a mask with pixels (an empty one is drawn nowhere)
    assert overlay.width >= 80 and (overlay.height > 60) == (entry["area"] > 0)


def test_same_defaults_in_the_predictor_the_cli_and_the_server(monkeypatch):
    """The bundled model refines with `guided` and uses its calibrated threshold everywhere."""
    from argparse import Namespace

    from stamp.cli import serve as serve_cli
    from stamp.cli.common import build_predictor
    from stamp.inference import StampPredictor
    from stamp.model.loading import shipped_model_names
    from stamp.model.modeling import StampModel
    from stamp.refine import GuidedRefiner

    if "tiny-synth" not in shipped_model_names():
        pytest.skip("no bundled model in this installation")
    model = StampModel.from_pretrained("tiny-synth")
    api = StampPredictor(model)
    assert isinstance(api.refiner, GuidedRefiner) and api.threshold == model.stamp.mask_threshold
    assert StampPredictor(*build_tiny_model(seed=0)).refiner is None  # other models: no refinement
    args = Namespace(model=None, dtype=None, device="cpu", base_model=None, cells=None)
    cli = build_predictor(Namespace(**vars(args), threshold=None, refine="auto"))
    assert isinstance(cli.refiner, GuidedRefiner) and cli.threshold == api.threshold
    import uvicorn

    ran = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(app=app))
    parser = build_parser()
    assert serve_cli.run(parser.parse_args(["serve", "--port", "0"])) == 0
    served = ran["app"].state.service.predictor
    assert isinstance(served.refiner, GuidedRefiner) and served.threshold == api.threshold


def test_hub_id_is_a_one_line_error(tmp_path, capsys):
    img = tmp_path / "in.png"
    random_image(32, 32).save(img)
    argv = ["segment", str(img), "--prompt", "x", "--out", str(tmp_path / "o")]
    assert main(argv + ["--model", "Qwen/Qwen2-VL-2B-Instruct"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "models are local folders" in err
    assert "huggingface-cli download Qwen/Qwen2-VL-2B-Instruct --local-dir" in err


def test_python_dash_m_stamp():
    proc = subprocess.run([sys.executable, "-m", "stamp", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "segment" in proc.stdout and proc.stdout.startswith("usage: stamp")


def test_every_command_has_an_example_and_every_option_is_documented():
    import argparse

    from stamp.cli import build_parser

    parser = build_parser()
    commands = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            commands.update(action.choices)
    commands["data synth"] = commands["data"]._subparsers._group_actions[0].choices["synth"]
    for name, sub in commands.items():
        text = sub.format_help()
        assert "examples:" in text, name
        for action in sub._actions:
            if action.option_strings and action.help != argparse.SUPPRESS:
                assert action.help, f"stamp {name} {action.option_strings[0]} has no help"
            if not action.option_strings and not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"stamp {name} {action.dest} has no help"
    bench = commands["bench"].format_help()
    assert "add_parser" not in bench and "cmd_bench" not in bench  # no internal docstring
    assert "expressions" in commands["eval"].format_help()  # --limit says what it counts


def test_quiet_by_default_verbose_shows_library_output(tmp_path):
    import os

    img = tmp_path / "in.png"
    random_image(40, 40).save(img)
    base = [sys.executable, "-m", "stamp", "segment", str(img), "--prompt", "x", "--max-new-tokens", "1"]
    hidden = ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS", "TRANSFORMERS_NO_ADVISORY_WARNINGS")
    env = {k: v for k, v in os.environ.items() if k not in hidden}  # as a user's shell has it
    run = dict(capture_output=True, text=True, env=env)
    quiet = subprocess.run(base + ["--out", str(tmp_path / "q")], **run)
    assert quiet.returncode == 0, quiet.stderr
    assert "Loading weights" not in quiet.stderr and "it/s" not in quiet.stderr
    loud = subprocess.run(base + ["--out", str(tmp_path / "v"), "--verbose"], **run)
    assert loud.returncode == 0 and "Loading weights" in loud.stderr


def test_quiet_hides_deepspeeds_accelerator_notice():
    pytest.importorskip("deepspeed")
    code = "from stamp.cli import quiet_third_parties; quiet_third_parties(); import deepspeed"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0 and "WARNING" not in proc.stdout and "Setting accelerator" not in proc.stdout


def test_train_finds_shipped_recipes_by_name_from_any_folder(tmp_path, monkeypatch, capsys):
    from stamp.recipes import PACKAGE_DIR, find_recipe
    from stamp.yaml_config import ConfigError

    monkeypatch.chdir(tmp_path)
    path = find_recipe("tiny-synth")
    assert path.name == "tiny-synth.yaml" and path.is_file()
    assert (PACKAGE_DIR / "tiny-synth.yaml").is_file()  # shipped in the package (a wheel has it too)
    assert find_recipe("configs/tiny-synth.yaml") == path
    (tmp_path / "mine.yaml").write_text("run:\n  steps: 1\n")
    assert find_recipe("mine.yaml").resolve() == tmp_path / "mine.yaml"  # paths are still accepted
    with pytest.raises(ConfigError, match="tiny-synth"):
        find_recipe("no-such-recipe")
    assert main(["train", "no-such-recipe"]) == 2
    assert "shipped recipe" in capsys.readouterr().err


def test_ctrl_c_in_training_names_the_checkpoint_and_the_resume_command(tmp_path, monkeypatch, capsys):
    import stamp.train.trainer
    from stamp.train.checkpoint import STATE_FILE, checkpoint_dir

    run = tmp_path / "run"
    done = checkpoint_dir(run) / "step_0000004"
    done.mkdir(parents=True)
    (done / STATE_FILE).write_text("{}")

    def interrupted(cfg, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(stamp.train.trainer, "train", interrupted)
    assert main(["train", "tiny-synth", f"run.out_dir={run}", "run.steps=8"]) == 130
    err = capsys.readouterr().err
    assert str(done) in err
    assert f"stamp train tiny-synth run.out_dir={run} run.steps=8 --resume" in err


def test_data_synth_says_force_and_the_eval_command(tmp_path, capsys):
    out = tmp_path / "d"
    argv = ["data", "synth", "--out", str(out), "--n", "2", "--format", "refer", "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"stamp eval --data refcoco:{out} --split val" in printed
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--force" in err and "overwrite=True" not in err
    assert main(argv + ["--force"]) == 0


@pytest.mark.parametrize("fmt", ["refer", "grefer", "reasonseg", "llava"])
def test_data_synth_printed_eval_command_runs_as_printed(tmp_path, monkeypatch, capsys, fmt):
    """The `evaluate with:` line of every format runs as printed (llava's images are found; the results
    go beside the data, so a second format's line does not collide with the first's results.json)."""
    import shlex

    monkeypatch.chdir(tmp_path)
    assert main(["data", "synth", "--out", "s", "--n", "2", "--format", fmt, "--no-progress"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("evaluate with: "))
    argv = shlex.split(line.removeprefix("evaluate with: "))
    assert argv[0] == "stamp"
    assert main(argv[1:]) == 0, capsys.readouterr().err
    assert json.loads((tmp_path / "s" / "results.json").read_text())["n_samples"] == 2


def test_tools_are_subcommands(tmp_path, capsys):
    """The maintenance tools run as `stamp` subcommands (no other `python -m` entry points)."""

    assert main(["serve", "--openapi"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "/v1/segment" in schema["paths"]
    src = tmp_path / "model"
    save_tiny_model(src)
    assert main(["export", str(src), "--out", str(tmp_path / "bf16")]) == 0
    exported = StampModel.from_pretrained(
        tmp_path / "bf16"
    )  # stored in bf16, loaded in fp32 (its default_dtype)
    stored = load_file(str(tmp_path / "bf16" / "model.safetensors"))
    assert {t.dtype for t in stored.values()} == {torch.bfloat16}
    assert exported.dtype == torch.float32 and exported.stamp.default_dtype == "float32"
    assert main(["export", str(src), "--out", str(tmp_path / "bf16")]) == 2  # exists: --force needed
    tok = tmp_path / "tok"
    assert main(["data", "tokenizer", "--out", str(tok), "--samples", "20", "--vocab-size", "300"]) == 0
    assert (tok / "tokenizer.json").is_file()
    assert main(["data", "tokenizer", "--out", str(tok), "--samples", "20"]) == 2


def test_the_bundled_model_by_name_and_its_copy_answer_alike_in_the_cli(tmp_path, capsys):
    """`--model tiny-synth` names the bundled model; a copy saved with save_stamp elsewhere gives the
    same answer and the same mask files (its defaults travel in its config), without the bundled note."""
    from stamp.processing import StampProcessor

    image = tmp_path / "scene.png"
    Image.fromarray((np.random.RandomState(3).rand(150, 190, 3) * 255).astype(np.uint8)).save(image)
    copy = tmp_path / "copy"
    StampModel.from_pretrained("tiny-synth").save_stamp(copy, StampProcessor.from_pretrained("tiny-synth"))
    records, notes = [], []
    for name, model in (("a", "tiny-synth"), ("b", str(copy))):
        out = tmp_path / name
        argv = ["segment", str(image), "--prompt", "Segment the red circle.", "--model", model]
        assert main([*argv, "--answer-prefix", "Sure, it is <|seg|>", "--out", str(out)]) == 0
        notes.append("stamp: note:" in capsys.readouterr().err)
        record = json.loads((out / "result.json").read_text())
        records.append((record["text"], [(m["area"], m["rle"]["counts"]) for m in record["masks"]]))
        assert (out / "mask_0.png").is_file()
    assert records[0] == records[1] and records[0][1]
    assert notes == [True, False]  # the note names the bundled model; the copy is the user's own


def test_export_without_out_writes_a_new_folder_here_never_the_package(tmp_path, monkeypatch, capsys):
    """`stamp export MODEL_DIR` alone writes ./NAME-bf16 in the working directory; the installed
    package's bundled model is never a default target."""
    from stamp.model.loading import SHIPPED_MODELS_DIR

    bundled = SHIPPED_MODELS_DIR / "tiny-synth" / "model.safetensors"
    before = bundled.stat().st_mtime_ns
    src = tmp_path / "run" / "model"
    save_tiny_model(src)
    monkeypatch.chdir(tmp_path)
    assert main(["export", str(src)]) == 0
    assert (tmp_path / "model-bf16" / "model.safetensors").is_file()
    assert "model-bf16" in capsys.readouterr().out
    assert main(["export", str(src)]) == 2  # exists: --force needed
    assert bundled.stat().st_mtime_ns == before
