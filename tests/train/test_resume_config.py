"""`stamp train ... --resume` continues the run that was started: the settings its checkpoint recorded,
not the recipe's; an override that would change the run is refused, a recipe that differs is said."""

import json
from dataclasses import asdict

import pytest

import stamp.train.trainer
from stamp.cli import main
from stamp.recipes import find_recipe
from stamp.train.checkpoint import STATE_FILE
from stamp.train.config import TrainConfig
from stamp.yaml_config import load_config


@pytest.fixture
def started(tmp_path, monkeypatch):
    """A run of tiny-synth with batch 2 and 2 steps, interrupted after its first checkpoint (faked:
    only what resuming reads), and `train` replaced by a recorder of the config it is given."""
    run = tmp_path / "run"
    overrides = [f"run.out_dir={run}", "optim.batch_size=2", "run.steps=2"]
    cfg = load_config(TrainConfig, find_recipe("tiny-synth"), overrides)
    ckpt = run / "checkpoints" / "step_0000001"
    ckpt.mkdir(parents=True)
    (ckpt / STATE_FILE).write_text(json.dumps({"step": 1, "config": asdict(cfg)}))
    seen = []
    monkeypatch.setattr(stamp.train.trainer, "train", lambda cfg, **kw: seen.append(cfg))
    return run, overrides, seen


def test_resume_keeps_the_runs_overrides(started, capsys):
    run, overrides, seen = started
    assert main(["train", "tiny-synth", f"run.out_dir={run}", "--resume"]) == 0
    assert seen[-1].optim.batch_size == 2 and seen[-1].run.steps == 2
    err = capsys.readouterr().err
    assert "the run's own settings" in err and "optim.batch_size=2" in err and "run.steps=2" in err
    assert main(["train", "tiny-synth", *overrides, "--resume"]) == 0  # the printed resume command
    assert seen[-1].optim.batch_size == 2 and "own settings" not in capsys.readouterr().err


def test_resume_refuses_an_override_that_changes_the_run(started, capsys):
    run, overrides, seen = started
    assert main(["train", "tiny-synth", *overrides, "optim.batch_size=4", "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("stamp: error: --resume") and "optim.batch_size=4 (the run's: 2)" in err
    assert err.count("\n") == 1 and not seen
