"""Training end to end on a tiny config: loss goes down, checkpoints resume exactly, 2 ranks agree."""

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_two_cpu_ranks, save_tiny_model
from safetensors.torch import load_file

from stamp.model.modeling import StampModel
from stamp.tiny import build_tiny_model
from stamp.train.checkpoint import latest_checkpoint
from stamp.train.config import TrainConfig
from stamp.train.step import ExtraLoss
from stamp.train.trainer import AUXILIARY_FILE, Trainer, train
from stamp.yaml_config import ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "tiny-synth.yaml"


def _cfg(overrides, *extra):
    return load_config(TrainConfig, CONFIG, list(overrides) + list(extra))


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return load_file(str(ckpt / "model" / "model.safetensors"))


def test_training_reduces_loss_and_writes_artifacts(tiny_overrides, tmp_path):
    cfg = _cfg(
        tiny_overrides,
        "run.steps=12",
        "run.save_every=6",
        "optim.lr=3e-3",
        "data.sources=[{kind: synthref, split: val}]",
    )
    trainer = Trainer(cfg, progress=False)
    batch = trainer.stream.batch(range(4))
    with torch.no_grad():
        before = float(trainer.model.stamp_forward(**batch).loss)
    last = trainer.fit()
    with torch.no_grad():
        after = float(trainer.model.eval().stamp_forward(**batch).loss)
    assert after < before
    out = Path(cfg.run.out_dir)
    assert last == latest_checkpoint(out) and last.name == "step_0000012"
    assert (out / "metrics.csv").read_text().count("train,loss") == 12
    waits = [
        float(line.split(",")[-1])
        for line in (out / "metrics.csv").read_text().splitlines()
        if "data_wait_frac" in line
    ]
    assert len(waits) == 12 and all(
        0.0 <= w <= 1.0 for w in waits
    )  # the share of time spent waiting for data
    assert (out / "loss_curves.png").stat().st_size > 0
    assert (last / "optimizer.safetensors").is_file() and (last / "rng.safetensors").is_file()
    assert last.stat().st_mode & 0o777 == (out / "checkpoints").stat().st_mode & 0o777  # not mkdtemp's 0700
    assert len(list((out / "checkpoints").glob("step_*"))) <= cfg.run.keep_checkpoints

    loaded = StampModel.from_pretrained(last / "model")  # a checkpoint's model folder is a loadable model
    assert loaded.stamp.seg_token_id == trainer.model.stamp.seg_token_id


def test_refuses_to_clobber_existing_run(tiny_overrides):
    cfg = _cfg(tiny_overrides, "run.steps=1")
    train(cfg, progress=False)
    try:
        train(cfg, progress=False)
    except FileExistsError as exc:
        assert "--resume" in str(exc)
    else:
        raise AssertionError("a second run into the same out_dir must be refused")


def test_killed_run_resumes_to_the_same_weights(tiny_overrides, tmp_path):
    steps = ["run.steps=6", "run.save_every=2", "run.keep_checkpoints=5"]
    ref_dir, kill_dir = tmp_path / "ref", tmp_path / "killed"
    train(_cfg(tiny_overrides, *steps, f"run.out_dir={ref_dir}"), progress=False)
    # the same run in a subprocess, killed (SIGKILL) once its step-2 checkpoint exists
    cmd = [
        sys.executable,
        "-m",
        "stamp",
        "train",
        str(CONFIG),
        "--no-progress",
        *tiny_overrides,
        *steps,
        f"run.out_dir={kill_dir}",
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    deadline = time.time() + 240
    while latest_checkpoint(kill_dir) is None and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    partial = latest_checkpoint(kill_dir)
    assert partial is not None and int(partial.name.split("_")[1]) < 6, "the run must be killed mid-way"
    train(_cfg(tiny_overrides, *steps, f"run.out_dir={kill_dir}"), resume=True, progress=False)
    steps_logged = [
        int(line.split(",")[0]) for line in (kill_dir / "metrics.csv").read_text().splitlines()[1:]
    ]
    assert steps_logged == sorted(steps_logged)  # the killed run's rows after its checkpoint were dropped
    a, b = _weights(latest_checkpoint(ref_dir)), _weights(latest_checkpoint(kill_dir))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), atol=1e-6, err_msg=k)


def test_stop_at_step_keeps_the_schedule_of_the_full_run(tiny_overrides, tmp_path):
    common = ["run.steps=6", "run.save_every=2", "run.keep_checkpoints=5", "optim.warmup_steps=2"]
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    train(_cfg(tiny_overrides, *common, f"run.out_dir={full_dir}"), progress=False)
    last = train(
        _cfg(tiny_overrides, *common, "run.stop_at_step=3", f"run.out_dir={cut_dir}"), progress=False
    )
    assert last is not None and last.name == "step_0000003"  # saved where it stopped, not at a save_every
    lrs = [
        line.split(",")[-1] for line in (cut_dir / "metrics.csv").read_text().splitlines() if ",lr," in line
    ]
    full_lrs = [
        line.split(",")[-1] for line in (full_dir / "metrics.csv").read_text().splitlines() if ",lr," in line
    ]
    assert len(lrs) == 3 and lrs == full_lrs[:3]  # the cosine is laid out over 6 steps, not 3
    # resumed without the stop, it finishes the same run as the uninterrupted one
    train(_cfg(tiny_overrides, *common, f"run.out_dir={cut_dir}"), resume=True, progress=False)
    a, b = _weights(latest_checkpoint(full_dir)), _weights(latest_checkpoint(cut_dir))
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), atol=1e-6, err_msg=k)
    with pytest.raises(ValueError, match="stop_at_step"):
        _cfg(tiny_overrides, "run.steps=6", "run.stop_at_step=7")


def test_two_process_gloo_ranks_hold_identical_weights(tiny_overrides, tmp_path):
    out = run_two_cpu_ranks(
        ["train", str(CONFIG), "--no-progress", *tiny_overrides, "run.steps=3", "run.save_every=3"],
        port=29517,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    import re

    found = dict(re.findall(r"rank (\d+) weights sha256 ([0-9a-f]{64})", out.stdout + out.stderr))
    assert set(found) == {"0", "1"}, out.stdout[-2000:] + out.stderr[-2000:]
    assert found["0"] == found["1"]


def test_deepspeed_zero2_on_two_cpu_ranks_matches_ddp_and_resumes_exactly(tiny_overrides, tmp_path):
    """configs/accelerate/zero2.yaml really shards on the CPU (gloo), trains what DDP trains, and a
    resumed run reloads each rank's optimizer partition."""
    import re

    common = ["train", str(CONFIG), "--no-progress", *tiny_overrides, "run.steps=3", "run.save_every=3"]
    common += ["optim.grad_accum=2", "optim.lr=3e-3", "optim.warmup_steps=1"]  # (a schedule, accumulation)
    runs = {}
    for name, config, port in (
        ("ddp", None, 29541),
        ("zero2", ROOT / "configs/accelerate/zero2.yaml", 29543),
    ):
        out_dir = tmp_path / name
        out = run_two_cpu_ranks([*common, f"run.out_dir={out_dir}"], port, 600, accelerate_config=config)
        assert out.returncode == 0, out.stderr[-3000:]
        found = dict(re.findall(r"rank (\d+) weights sha256 ([0-9a-f]{64})", out.stdout + out.stderr))
        assert set(found) == {"0", "1"} and found["0"] == found["1"], out.stdout[-2000:] + out.stderr[-2000:]
        runs[name] = (out_dir, out.stdout + out.stderr)
    assert "2 processes, DEEPSPEED ZeRO stage 2 (DeepSpeedZeroOptimizer), backend gloo" in runs["zero2"][1]
    assert "2 processes, MULTI_CPU, backend gloo" in runs["ddp"][1]
    a = _weights(latest_checkpoint(runs["ddp"][0]))
    b = _weights(latest_checkpoint(runs["zero2"][0]))
    start = Trainer(
        _cfg(tiny_overrides, f"run.out_dir={tmp_path / 'init'}"), progress=False
    ).model.state_dict()
    assert a.keys() == b.keys()
    moved = 0
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), atol=2e-5, err_msg=k)
        moved += int(not torch.equal(a[k], start[k].to(a[k].dtype)))
    assert moved > len(a) // 2  # both runs trained (the comparison is not of two untouched models)
    # killed after step 2 and resumed: each rank reloads its optimizer partition, so the run is exact
    cut = [*common, f"run.out_dir={tmp_path / 'cut'}"]
    zero2 = ROOT / "configs/accelerate/zero2.yaml"
    first = run_two_cpu_ranks([*cut, "run.stop_at_step=2"], 29545, 600, accelerate_config=zero2)
    assert first.returncode == 0, first.stderr[-3000:]
    stopped = latest_checkpoint(tmp_path / "cut")
    assert stopped.name == "step_0000002"
    assert sorted(p.name for p in (stopped / "optimizer_ranks").iterdir()) == [
        "rank00000.json",
        "rank00000.safetensors",
        "rank00001.json",
        "rank00001.safetensors",
    ]
    resumed = run_two_cpu_ranks([*cut, "--resume"], 29547, 600, accelerate_config=zero2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "optimizer moments restart" not in resumed.stdout + resumed.stderr
    c = _weights(latest_checkpoint(tmp_path / "cut"))
    for k in b:
        np.testing.assert_allclose(c[k].numpy(), b[k].numpy(), atol=1e-6, err_msg=k)
    # the DDP run continued under ZeRO: its whole-optimizer state does not fit the partitions, so the
    # moments restart (said), rather than a crash
    more = [*common, f"run.out_dir={tmp_path / 'ddp'}", "run.steps=4", "--resume"]
    switched = run_two_cpu_ranks(more, 29549, 600, accelerate_config=zero2)
    assert switched.returncode == 0, switched.stderr[-3000:]
    assert "optimizer moments restart" in switched.stdout + switched.stderr
    assert latest_checkpoint(tmp_path / "ddp").name == "step_0000004"


def test_lora_and_frozen_vision_train_the_right_parameters(tiny_overrides, tmp_path):

    base = tmp_path / "base"
    save_tiny_model(base)
    cfg = _cfg(
        tiny_overrides,
        "run.steps=2",
        "run.save_every=2",
        "model.init=pretrained",
        f"model.path={base}",
        "model.lora={r: 4, alpha: 8}",
        "model.freeze_vision=true",
    )
    trainer = Trainer(cfg, progress=False)
    trainable = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert any("lora_A" in n and "language_model" in n for n in trainable)
    assert any("classifier" in n for n in trainable) and any("embed_tokens" in n for n in trainable)
    assert not any(".visual." in n for n in trainable)
    assert not any("q_proj.base_layer" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    last = trainer.fit()
    after = dict(trainer.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in trainable)
    assert all(torch.equal(before[n], after[n]) for n in before if n not in trainable)
    merged = StampModel.from_pretrained(last / "model", base_model=base)  # adapter checkpoint + its base
    assert merged.stamp.seg_token_id == trainer.processor.seg_token_id


def test_resume_takes_data_settings_from_the_config(tiny_overrides, tmp_path):
    from stamp.train.build import build_model

    cfg = _cfg(tiny_overrides, "run.steps=1")
    last = train(cfg, progress=False)
    soft = _cfg(tiny_overrides, "loss.target_threshold=null", "model.max_cells=16")
    _, processor = build_model(soft, weights_from=last / "model")
    assert processor.settings.target_threshold is None
    assert processor.settings.max_pixels == 16 * 28 * 28


def test_next_token_baseline_trains_on_label_text(tiny_overrides, tmp_path):
    """The Text4Seg-style baseline of the experiments (experiments/next_token.py), through the trainer's
    arguments: masks become label tokens after `<|seg|>`, learned by the text loss, no placeholders
    planned, and the script's file in each checkpoint's model."""
    from helpers import load_experiment

    nt = load_experiment("next_token")
    cfg = _cfg(tiny_overrides, "run.steps=6", "optim.lr=3e-3", "data.task_weights={refer: 1.0}")
    trainer = Trainer(cfg, progress=False, **nt.training_extras(cfg))
    batch = trainer.stream.batch(range(2))
    settings = trainer.model.stamp
    assert "mask_targets" not in batch
    ids = batch["input_ids"][0].tolist()
    seg = ids.index(settings.seg_token_id)
    n_cells = int(batch["image_grid_thw"][0][1] * batch["image_grid_thw"][0][2]) // 4
    assert set(ids[seg + 1 : seg + 1 + n_cells]) <= set(
        nt.model_labels(trainer.model, trainer.processor.tokenizer)
    )
    with torch.no_grad():
        out = trainer.model.stamp_forward(**batch)
    assert out.mask_logits is None and out.text_loss is not None
    last = trainer.fit()
    assert (last / "model" / nt.MARKER_FILE).is_file()
    pred = nt.LabelPredictor(*nt.load_model(last / "model"))
    pred.set_image(np.zeros((100, 120, 3), dtype=np.uint8))
    res = pred.chat("Segment it.", answer_prefix="<|seg|>", max_new_tokens=2)
    assert len(res.masks) == 1 and res.masks[0].mask.shape == (100, 120)


def test_sharding_configs_are_not_silently_downgraded(monkeypatch):
    """accelerate turns an FSDP/DeepSpeed config into plain CPU data parallelism without a word; stop."""
    import pytest

    from stamp.train.trainer import _check_sharding_honoured
    from stamp.yaml_config import ConfigError

    _check_sharding_honoured("MULTI_CPU")  # nothing asked for: fine
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    _check_sharding_honoured("FSDP")
    with pytest.raises(ConfigError, match="asks for FSDP but accelerate set up MULTI_CPU"):
        _check_sharding_honoured("MULTI_CPU")
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError, match="DEEPSPEED"):
        _check_sharding_honoured("NO")


def test_checkpoint_without_optimizer_state_resumes_the_rest(tmp_path):
    from stamp.train.checkpoint import load_checkpoint, save_checkpoint

    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5**s)
    sched.step()
    path = save_checkpoint(tmp_path, 1, lambda p: p.mkdir(), None, sched, {"samples_seen": 4}, keep=2)
    assert not (path / "optimizer.safetensors").exists()
    opt2 = torch.optim.AdamW(model.parameters(), lr=1.0)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, lambda s: 0.5**s)
    state = load_checkpoint(path, opt2, sched2)
    assert state["optimizer"] is None and state["samples_seen"] == 4
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_data_workers_build_the_same_batches_in_order(tiny_overrides):
    """Worker processes (data.num_workers) only move batch building off the training process: the
    micro-batches come out in the training order and equal the ones the stream builds itself."""
    cfg = _cfg(
        tiny_overrides, "run.steps=3", "optim.batch_size=2", "optim.grad_accum=2", "data.num_workers=2"
    )
    trainer = Trainer(cfg, progress=False)
    trainer.step = 1  # as after a resume: the loader starts at the current step
    got = list(trainer.micro_batches())
    assert len(got) == 4
    for j, batch in enumerate(got):
        step, micro = divmod(j + 2, 2)
        start = step * 4 + micro * 2
        want = trainer.stream.batch(range(start, start + 2))
        assert batch.keys() == want.keys() and "plan" in want  # the workers planned the step too
        for k in want:
            if k == "plan":
                for name in want[k]._DEVICE_FIELDS:
                    assert torch.equal(getattr(batch[k], name), getattr(want[k], name)), (j, name)
            else:
                assert torch.equal(batch[k], want[k]), (j, k)


def test_bf16_runs_move_pixels_in_bf16_and_the_forward_is_unchanged(tiny_overrides):
    """Under bf16 autocast the pixel values travel in bf16 (half the bytes); the vision tower's input
    is rounded to bf16 by autocast anyway, so the loss is bit-identical to feeding fp32 pixels."""
    bf16 = Trainer(_cfg(tiny_overrides, "run.steps=1", "run.precision=bf16"), progress=False)
    fp32 = Trainer(_cfg(tiny_overrides, "run.steps=1", "run.precision=fp32"), progress=False)
    got, want = bf16.stream.batch(range(3)), fp32.stream.batch(range(3))
    got.pop("plan"), want.pop("plan")
    assert got["pixel_values"].dtype == torch.bfloat16 and want["pixel_values"].dtype == torch.float32
    assert torch.equal(got["pixel_values"], want["pixel_values"].to(torch.bfloat16))
    model = bf16.model.eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        a = model.stamp_forward(**got)
        b = model.stamp_forward(**want)
    assert torch.equal(a.loss, b.loss) and torch.equal(a.mask_logits, b.mask_logits)


def test_pretrained_keeps_its_image_range_unless_the_config_sets_one(tiny_overrides, tmp_path):
    from stamp.train.build import build_model

    base = tmp_path / "base"
    model, processor = build_tiny_model(seed=0)
    processor.set_pixel_range(6 * 28 * 28, 12 * 28 * 28)
    model.save_stamp(base, processor)
    overrides = [o for o in tiny_overrides if "_cells=" not in o] + [
        "model.min_cells=null",
        "model.max_cells=null",
    ]
    pretrained = ["model.init=pretrained", f"model.path={base}"]
    kept = build_model(_cfg(overrides, *pretrained))[1].settings
    assert (kept.min_pixels, kept.max_pixels) == (6 * 784, 12 * 784)
    larger = build_model(_cfg(overrides, *pretrained, "model.max_cells=30"))[1].settings
    assert (larger.min_pixels, larger.max_pixels) == (6 * 784, 30 * 784)  # min stays the checkpoint's
    with pytest.raises(ValueError, match="min_cells"):
        build_model(_cfg(overrides, *pretrained, "model.max_cells=4"))
    scratch = build_model(_cfg(overrides))[1].settings
    assert (scratch.min_pixels, scratch.max_pixels) == (64 * 784, 256 * 784)
    with pytest.raises(ValueError, match="max_cells"):
        _cfg(overrides, "model.min_cells=9", "model.max_cells=4")


class _Toy(ExtraLoss):
    """A scalar fit to the batch size, with a field from the samples and a count of the head's calls."""

    def __init__(self, model):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.zeros(()))

    def batch_fields(self, samples, examples):
        return {
            "n": torch.tensor(float(len(samples))),
            "images": torch.tensor(sum("image" in e for e in examples)),
        }

    @contextlib.contextmanager
    def observe(self, model):
        calls = []
        hook = model.classifier.register_forward_hook(lambda *_: calls.append(1))
        try:
            yield calls
        finally:
            hook.remove()

    def loss(self, out, observed, n, images):
        term = (self.scale - n).pow(2)
        return term, {"toy_loss": term, "toy_calls": torch.tensor(float(len(observed))), "toy_images": images}


def test_an_extra_loss_trains_with_the_model_and_resumes_exactly(tiny_overrides, tmp_path):
    toy = {"extra_losses": {"toy": (_Toy, 0.5)}}
    common = ["run.steps=4", "run.save_every=2", "run.keep_checkpoints=5"]
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    last = train(_cfg(tiny_overrides, *common, f"run.out_dir={full_dir}"), progress=False, **toy)
    rows = [line.split(",") for line in (full_dir / "metrics.csv").read_text().splitlines()]
    logged = {
        name: [float(r[-1]) for r in rows if r[2] == name] for name in ("toy_loss", "toy_calls", "loss")
    }
    assert len(logged["toy_loss"]) == 4 and logged["toy_loss"][0] == 4.0  # (0 - 2 samples)^2
    assert all(c >= 1 for c in logged["toy_calls"])  # the forward ran inside `observe`
    aux = load_file(str(last / AUXILIARY_FILE))
    assert set(aux) == {"toy.scale"} and 0.0 < float(aux["toy.scale"]) < 2.0  # trained, towards 2
    assert "scale" not in " ".join(_weights(last))  # the exported model holds none of it
    # stopped half-way and resumed (batches built by a data worker): the same weights and parameter
    cut = [*common, f"run.out_dir={cut_dir}", "data.num_workers=1"]
    train(_cfg(tiny_overrides, *cut, "run.stop_at_step=2"), progress=False, **toy)
    resumed = train(_cfg(tiny_overrides, *cut), resume=True, progress=False, **toy)
    a, b = _weights(last), _weights(resumed)
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), atol=1e-6, err_msg=k)
    assert float(load_file(str(resumed / AUXILIARY_FILE))["toy.scale"]) == pytest.approx(
        float(aux["toy.scale"])
    )
    # weight 0 turns it off: no parameters, no file
    off = train(
        _cfg(tiny_overrides, "run.steps=1", f"run.out_dir={tmp_path / 'off'}"),
        extra_losses={"toy": (_Toy, 0.0)},
    )
    assert not (off / AUXILIARY_FILE).exists()


def test_a_bad_extra_loss_is_refused_and_the_config_names_none(tiny_overrides):
    with pytest.raises(ValueError, match="must be >= 0"):
        Trainer(_cfg(tiny_overrides), progress=False, extra_losses={"toy": (_Toy, -1.0)})
    with pytest.raises(ValueError, match="identifier"):
        Trainer(_cfg(tiny_overrides), progress=False, extra_losses={"no-name": (_Toy, 1.0)})
    with pytest.raises(TypeError, match="returned Linear"):
        Trainer(
            _cfg(tiny_overrides), progress=False, extra_losses={"bad": (lambda m: torch.nn.Linear(1, 1), 1.0)}
        )
    with pytest.raises(ConfigError, match="auxiliary"):
        _cfg(tiny_overrides, "loss.auxiliary={toy: 1}")  # extra terms are a script's, never the config's
