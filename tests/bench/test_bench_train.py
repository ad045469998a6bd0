"""`stamp bench --parts train`: the training step on the tiny model writes the documented fields, LoRA
trains only the adapters and the modules_to_save, and a real-size preset that cannot fit is refused
before anything is built. No timing assertions."""

import json
import math

import pytest
import torch

from stamp.bench import presets
from stamp.bench.presets import PROCESSOR_SETTINGS, build_config, meta_model
from stamp.bench.report import render
from stamp.bench.train_step import TrainSettings, _lora_trainable, cells_for, estimate_memory, run_train
from stamp.cli import main as stamp_main
from stamp.tiny import build_tiny_model
from stamp.train.config import LoraConfig

FIELDS = (
    "device", "mode", "grad_ckpt", "batch_size", "image_side", "cells", "tokens_per_sample", "precision",
    "weight_dtype", "trainable_params", "total_params", "estimate_bytes", "steps", "warmup", "ms_per_step",
    "min_ms_per_step", "max_ms_per_step", "samples_per_s", "peak_mem_mb", "resident_mb", "peak_total_mb",
    "peak_mem_method", "loss", "timings",
)  # fmt: skip


@pytest.fixture(scope="module")
def train_doc(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "train.json"
    argv = ["bench", "--preset", "tiny", "--quick", "--device", "cpu", "--parts", "train", "--json", str(out)]
    assert stamp_main(argv) == 0
    return json.loads(out.read_text())


def test_train_records(train_doc):
    doc = train_doc
    assert doc["train"] and not doc["mask_pass"] and not doc["request"]
    assert doc["settings"]["train"]["batch_sizes"] == [1, 2] and doc["settings"]["parts"] == ["train"]
    configs = {(r["grad_ckpt"], r["batch_size"]) for r in doc["train"]}
    assert configs == {(c, b) for c in (True, False) for b in (1, 2)}
    for r in doc["train"]:
        assert all(key in r for key in FIELDS), sorted(set(FIELDS) - set(r))
        assert r["device"] == "cpu" and r["mode"] == "full" and r["precision"] == "bf16"
        assert r["trainable_params"] == r["total_params"] > 0 and r["weight_dtype"] == "float32"
        assert r["cells"] > 0 and r["tokens_per_sample"] > 2 * r["cells"]
        assert r["steps"] == 2 and r["min_ms_per_step"] <= r["ms_per_step"] <= r["max_ms_per_step"]
        assert r["samples_per_s"] == pytest.approx(r["batch_size"] * 1e3 / r["ms_per_step"])
        assert math.isfinite(r["loss"]) and r["loss"] > 0
        assert r["resident_mb"] > 0 and (r["peak_mem_mb"] is None or r["peak_mem_mb"] >= 0)
        est = r["estimate_bytes"]
        assert (
            est["total_bytes"] > est["weights_bytes"] > 0 and est["trainable_params"] == r["trainable_params"]
        )
    text = render(doc)
    assert "training step" in text and "samples/s" in text


def test_train_leaves_the_model_as_it_found_it():
    model, processor = build_tiny_model(seed=0)
    model.eval().requires_grad_(False)
    run_train(
        model,
        processor,
        TrainSettings(batch_sizes=[1], image_side=112, steps=1, warmup=0),
        log=lambda _: None,
    )
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert not any(getattr(m, "gradient_checkpointing", False) for m in model.modules())


def test_lora_trains_only_adapters_and_saved_modules():
    model, processor = build_tiny_model(seed=0)
    model.eval().requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapters, saved = _lora_trainable(model, LoraConfig())
    settings = TrainSettings(batch_sizes=[1], grad_ckpt=[False], lora=True, image_side=112, steps=1, warmup=1)
    (rec,) = run_train(model, processor, settings, log=lambda _: None)
    assert rec["mode"] == "lora" and rec["trainable_params"] == adapters + saved < rec["total_params"]
    after = model.state_dict()
    assert set(after) == set(before)  # the adapters are gone again
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    saved_names = tuple(LoraConfig().modules_to_save)
    assert changed and all(k.rsplit(".", 2)[-2] in saved_names for k in changed)


def test_refuses_a_preset_that_cannot_fit(monkeypatch, capsys):
    monkeypatch.setattr(presets, "available_bytes", lambda device: 8 * 2**30)

    def fail(*args, **kwargs):
        raise AssertionError("nothing may be built before the memory check")

    monkeypatch.setattr(presets, "build_preset_model", fail)
    argv = ["bench", "--preset", "qwen2-vl-2b", "--device", "cpu", "--parts", "train"]
    assert stamp_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "training qwen2-vl-2b" in err and "8.0 GiB are free" in err


def test_estimates_of_the_real_shapes():
    cells = cells_for(PROCESSOR_SETTINGS, 896)
    assert cells == 1024
    config, _ = build_config("qwen2-vl-2b")
    model = meta_model(config, torch.bfloat16)
    on = estimate_memory(model, TrainSettings(), 1, True, cells)
    off = estimate_memory(model, TrainSettings(), 1, False, cells)
    assert on["weights_bytes"] == 2 * on["trainable_params"]  # bf16, every parameter trained
    assert on["grads_and_adamw_bytes"] == 3 * on["weights_bytes"]
    assert off["activation_bytes"] > 4 * on["activation_bytes"]
    config7, _ = build_config("qwen2-vl-7b")
    lora = estimate_memory(meta_model(config7, torch.bfloat16), TrainSettings(lora=True), 1, True, cells)
    assert lora["trainable_params"] < 0.2 * lora["weights_bytes"] / 2
