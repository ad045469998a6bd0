"""Faults, tested the way storage engines test themselves: a write that fails with ENOSPC at every write
in turn, a training process killed with SIGKILL at random moments of a checkpoint save. Each asserts that
nothing the user had is lost, no partial output is left, the error is one line and the exit code right."""

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import save_tiny_model
from PIL import Image
from tests_train_overrides import TINY_MODEL

from stamp.cli import main
from stamp.train.checkpoint import checkpoint_dir, latest_checkpoint

CONFIG = "tiny-synth"


def _full_disk_at(monkeypatch, module, name, k):
    """Make `module.name` (a writer) fail with ENOSPC at its k-th call (1-based); returns the counter."""
    real = getattr(module, name)
    calls = {"n": 0}

    def writer(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == k:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, writer)
    return calls


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())} if folder.exists() else None


def _leftovers(parent):
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "model"
    save_tiny_model(path)
    return path


def _segment(model_dir, tmp_path, out, *extra):
    image = tmp_path / "in.png"
    if not image.exists():
        Image.fromarray((np.random.RandomState(0).rand(90, 120, 3) * 255).astype(np.uint8)).save(image)
    argv = ["segment", str(image), "--prompt", "Segment it.", "--model", str(model_dir), "--out", str(out)]
    return main([*argv, "--answer-prefix", "x <|seg|> y <|seg|>", "--max-new-tokens", "0", *extra])


def test_segment_on_a_full_disk_at_every_write(model_dir, tmp_path, monkeypatch, capsys):
    import stamp.outputs.files as files

    out = tmp_path / "out"
    counter = _full_disk_at(monkeypatch, files, "write_file", 0)  # count the writes of one result
    assert _segment(model_dir, tmp_path, out) == 0
    writes = counter["n"]
    assert writes == 4  # mask_0, mask_1, overlay, result.json
    before = _snapshot(out)
    capsys.readouterr()
    for k in range(1, writes + 1):
        for target, earlier in ((out, True), (tmp_path / f"new{k}", False)):
            monkeypatch.undo()
            _full_disk_at(monkeypatch, files, "write_file", k)
            assert _segment(model_dir, tmp_path, target, "--force") == 1, (k, target)
            lines = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("stamp: note:")]
            assert len(lines) == 1 and lines[0].startswith("stamp segment: error: no space left on device")
            assert ("earlier result is untouched" in lines[0]) == earlier, lines[0]
            assert _snapshot(out) == before  # the user's earlier result, byte for byte
            assert not (tmp_path / f"new{k}").exists()
            assert _leftovers(tmp_path) == [], k  # no temporary folder left behind


def test_results_file_on_a_full_disk(model_dir, tmp_path, monkeypatch, capsys):
    """`stamp eval --out FILE --force` on a full disk: the earlier results file stays as it was."""
    import stamp.outputs.files as files

    out = tmp_path / "results.json"
    out.write_text('{"earlier": true}\n')
    _full_disk_at(monkeypatch, files, "write_file", 1)
    argv = ["eval", "--data", "synthref", "--limit", "1", "--model", str(model_dir), "--out", str(out)]
    assert main([*argv, "--force", "--no-progress", "--max-new-tokens", "2", "--refine", "none"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("stamp eval: error: no space left on device while writing")
    assert "earlier results.json is untouched" in err[-1]
    assert out.read_text() == '{"earlier": true}\n' and _leftovers(tmp_path) == []


def _train_argv(out_dir, *extra):
    return [
        "train",
        CONFIG,
        "--no-progress",
        *TINY_MODEL,
        "run.eval_every=0",
        f"run.out_dir={out_dir}",
        *extra,
    ]


STEPS = ["run.steps=3", "run.save_every=1", "run.keep_checkpoints=5", "data.num_workers=0"]


@pytest.mark.parametrize("k", [1, 2, 3])
def test_training_checkpoint_on_a_full_disk(k, tmp_path, monkeypatch, capsys):
    """The k-th write of the step-2 checkpoint fails: one line naming the step, the folder, the last
    complete checkpoint and the resume command; no half checkpoint; the resume then finishes the run."""
    import stamp.train.checkpoint as checkpoint

    out_dir = tmp_path / "run"
    real = checkpoint.save_file
    calls = {"n": 0}

    def save_file(*args, **kwargs):  # optimizer state and RNG state of each checkpoint, in turn
        if "step_0000002" in str(args[1]) or ".step_0000002." in str(args[1]):
            calls["n"] += 1
            if calls["n"] == k:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(*args, **kwargs)

    if k == 3:  # the model folder of the checkpoint, written first
        import stamp.train.trainer as trainer

        real_model = trainer._save_model

        def save_model(model, processor, path, *args, **kwargs):
            if ".step_0000002." in str(path):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real_model(model, processor, path, *args, **kwargs)

        monkeypatch.setattr(trainer, "_save_model", save_model)
    else:
        monkeypatch.setattr(checkpoint, "save_file", save_file)
    assert main(_train_argv(out_dir, *STEPS)) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    line = err[0]
    assert line.startswith("stamp train: error: no space left on device while saving step 2 to ")
    assert "the last complete checkpoint is step_0000001 (resume with: stamp train tiny-synth" in line
    assert [p.name for p in checkpoint_dir(out_dir).iterdir()] == ["step_0000001"]
    monkeypatch.undo()
    assert main(_train_argv(out_dir, *STEPS, "--resume")) == 0
    assert latest_checkpoint(out_dir).name == "step_0000003"


def _weights(step_dir):
    from safetensors.torch import load_file

    return load_file(str(step_dir / "model" / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ref") / "run"
    assert main(_train_argv(out_dir, *KILL_STEPS)) == 0
    return _weights(latest_checkpoint(out_dir))


KILL_STEPS = ["run.steps=4", "run.save_every=1", "run.keep_checkpoints=5", "data.num_workers=0"]
SEEDS = [pytest.param(s, marks=pytest.mark.slow) if s >= 2 else s for s in range(20)]


@pytest.mark.parametrize("seed", SEEDS)
def test_killed_during_a_checkpoint_save_resumes_to_the_same_weights(seed, uninterrupted, tmp_path):
    """SIGKILL at a seeded random moment while a checkpoint is being written (its temporary folder
    exists): every checkpoint left is complete, and --resume reaches the weights of the uninterrupted
    run. Two seeds by default; `pytest -m slow tests/test_faults.py` runs twenty."""
    rng = random.Random(seed)
    out_dir = tmp_path / "run"
    argv = [sys.executable, "-m", "stamp", *_train_argv(out_dir, *KILL_STEPS)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    root = checkpoint_dir(out_dir)
    target = rng.randint(1, 3)  # which checkpoint's save to interrupt
    delay = rng.uniform(0.0, 0.05)
    deadline = time.time() + 300
    while proc.poll() is None and time.time() < deadline:
        if root.is_dir() and any(p.name.startswith(f".step_{target:07d}.") for p in root.iterdir()):
            time.sleep(delay)
            break
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    for step in sorted(root.glob("step_*")) if root.is_dir() else []:
        state = json.loads((step / "trainer_state.json").read_text())  # complete: its state is there
        assert state["step"] == int(step.name.split("_")[1])
    assert main(_train_argv(out_dir, *KILL_STEPS, "--resume")) == 0
    assert _leftovers(root) == []  # the killed save's temporary folder is gone
    got = _weights(latest_checkpoint(out_dir))
    assert got.keys() == uninterrupted.keys()
    for key in got:
        np.testing.assert_allclose(got[key].numpy(), uninterrupted[key].numpy(), atol=1e-6, err_msg=key)


def test_eval_names_the_sample_and_file_it_cannot_read(model_dir, tmp_path, capsys):
    from stamp.data.synthref import export_synthref

    data = export_synthref(tmp_path / "data", "val", 2, "llava", progress=False)
    broken = sorted((data / "images").iterdir())[1]
    broken.write_bytes(b"not a png")
    out = tmp_path / "r.json"
    argv = ["eval", "--data", f"llava:{data / 'conversations.json'}", "--split", "val", "--out", str(out)]
    assert main([*argv, "--model", str(model_dir), "--no-progress", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sample " in err[0] and broken.name in err[0] and not out.exists()


def test_export_and_data_synth_on_a_full_disk(model_dir, tmp_path, monkeypatch, capsys):
    """A full disk while saving a model or exporting data: one line, exit 1, nothing half-written."""
    from PIL import Image as PILImage

    from stamp.processing import StampProcessor

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(StampProcessor, "save_pretrained", full)
    assert main(["export", str(model_dir), "--out", str(tmp_path / "bf16")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"stamp export: error: no space left on device while saving the model to {tmp_path / 'bf16'}; nothing was written"
    ]
    monkeypatch.setattr(PILImage.Image, "save", full)
    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), "--n", "2", "--format", "llava", "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no space left on device while exporting to" in err[0], err
    assert not out.exists() and not (tmp_path / "bf16").exists() and _leftovers(tmp_path) == []
