"""Opt-in CUDA checks, for machines with a GPU: `pytest -m gpu` (CI has none and deselects them).

They cover what the CPU suite cannot: tensors created on the wrong device, the KV-cache path on CUDA,
training with data workers feeding a GPU, and the benchmark's CUDA timers. Without CUDA they fail
(they are only selected on purpose)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_image
from tests_train_overrides import TINY_MODEL

from stamp.data.sample import Turn
from stamp.inference import StampPredictor
from stamp.model.modeling import StampModel
from stamp.tiny import build_tiny_model

pytestmark = pytest.mark.gpu
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _needs_cuda():
    if not torch.cuda.is_available():
        pytest.fail("this test needs a CUDA device (run `pytest -m gpu` on a GPU machine)")


def _seg_logits(pair, device):
    model, processor = pair
    pred = StampPredictor(model.to(device), processor)
    pred.set_image(random_image(200, 300))
    res = pred.chat("Segment the box please.", answer_prefix="It is <|seg|> and <|seg|>", max_new_tokens=0)
    return res


def test_cuda_generation_matches_cpu_and_the_uncached_forward():
    cpu = _seg_logits(build_tiny_model(seed=1), "cpu")
    gpu_model, gpu_model_processor = build_tiny_model(seed=1)
    gpu = _seg_logits((gpu_model, gpu_model_processor), "cuda")
    assert gpu.text == cpu.text and len(gpu.masks) == 2
    for a, b in zip(gpu.masks, cpu.masks):
        assert np.abs(a.patch_logits - b.patch_logits).max() <= 1e-3
    # the cached two-phase pass on CUDA against one uncached training forward on CUDA
    proc = gpu_model_processor
    enc = proc.encode_image(random_image(200, 300))
    ids, labels = proc.encode_turns(
        [Turn("user", "Segment the box please."), Turn("assistant", gpu.text)], enc
    )
    batch = {
        k: v.cuda() for k, v in proc.collate([{"input_ids": ids, "labels": labels, "image": enc}]).items()
    }
    with torch.no_grad():
        out = gpu_model.stamp_forward(**batch)
    assert torch.isfinite(out.loss)
    for m, lg, g in zip(gpu.masks, out.mask_logits, out.mask_grids):
        ref = lg[: int(g[0] * g[1])].view(int(g[0]), int(g[1])).float().cpu().numpy()
        assert np.abs(m.patch_logits - ref).max() <= 1e-3


def test_cuda_training_with_data_workers(tmp_path):
    from stamp.train.config import TrainConfig
    from stamp.train.trainer import train
    from stamp.yaml_config import load_config

    cfg = load_config(
        TrainConfig,
        ROOT / "configs" / "tiny-synth.yaml",
        TINY_MODEL
        + [
            f"run.out_dir={tmp_path / 'run'}",
            "run.device=cuda",
            "run.steps=4",
            "run.eval_every=0",
            "run.log_every=1",
            "data.num_workers=2",
            "optim.batch_size=4",
        ],
    )
    from stamp.eval.validation import validation_for

    last = train(cfg, progress=False, **validation_for(cfg))
    loaded = StampModel.from_pretrained(last / "model")
    assert all(torch.isfinite(p).all() for p in loaded.parameters())


def test_bench_quick_on_cuda(tmp_path):
    out = tmp_path / "bench.json"
    run = subprocess.run(
        [sys.executable, "-m", "stamp", "bench", "--quick", "--device", "cuda", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert '"cuda"' in out.read_text()


def test_cuda_bf16_decoding_never_builds_cudnn_attention_plans():
    """Every decode step has a new key length; cuDNN attention would build a plan for each step, so STAMP
    runs sdpa without it on CUDA (`stamp.model.attention.attention_backends`)."""
    from torch.profiler import ProfilerActivity, profile

    model, processor = build_tiny_model(seed=1)
    model = model.to("cuda", torch.bfloat16).eval()
    pred = StampPredictor(model, processor)
    pred.set_image(random_image(112, 112, 0))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        pred.chat(
            "Segment it.",
            answer_prefix="<|seg|>",
            max_new_tokens=8,
        )
    names = {e.key for e in prof.key_averages()}
    assert not any("cudnn_attention" in n for n in names), sorted(n for n in names if "attention" in n)
    assert any("attention" in n for n in names)  # the attention ran, through another backend
