"""The mask-pass benchmark compares equal work: its cached and uncached passes (the core's `decode_step`
and `stamp_forward`) give the same mask logits, which are those of generation. No timing assertions."""

import pytest
import torch

from stamp.bench.flops import (
    TextDims,
    autoregressive_flops,
    forward_flops,
    mask_pass_flops,
    no_cache_flops,
)
from stamp.bench.mask_pass import MaskPassBench, check_equal_work, grid_for, plain_token_ids
from stamp.bench.timing import Timing, measure, measure_alternating, peak_memory
from stamp.inference.generation import GenerationConfig, GenerationRequest, generate
from stamp.tiny import build_tiny_model


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("position_mode", ["grid", "text"])
@pytest.mark.parametrize("attention_mode", ["hybrid", "causal"])
def test_cached_and_uncached_passes_agree(attn, position_mode, attention_mode):
    model, processor = build_tiny_model(
        seed=3, attn_implementation=attn, position_mode=position_mode, attention_mode=attention_mode
    )
    bench = MaskPassBench(model, history=40, grid=(3, 5))
    assert check_equal_work(bench) <= 1e-4
    assert bench.cache.get_seq_length() == 15 + 40  # every pass leaves the prompt's cache as it was


def test_stamp_pass_equals_production_generation():
    model, processor = build_tiny_model(seed=4)
    bench = MaskPassBench(model, history=24, grid=(4, 4))
    logits = bench.stamp()
    r = bench.request
    req = GenerationRequest(r.input_ids, r.features, r.grid_thw, [model.stamp.seg_token_id])
    out = generate(model, [req], GenerationConfig(max_new_tokens=1), pad_id=0, eos_ids=set())[0]
    assert len(out.mask_logits) == 1
    assert (out.mask_logits[0] - logits).abs().max() <= 1e-5


def test_history_is_really_used():
    model, processor = build_tiny_model(seed=5)
    a = MaskPassBench(model, history=16, grid=(2, 2), seed=0).stamp()
    b = MaskPassBench(model, history=16, grid=(2, 2), seed=1).stamp()
    assert (a - b).abs().max() > 1e-4


def test_autoregressive_baseline_labels_and_cache():
    model, processor = build_tiny_model(seed=6)
    bench = MaskPassBench(model, history=10, grid=(2, 3))
    labels = bench.autoregressive()
    assert len(labels) == 6 and set(labels) <= set(bench.label_ids.tolist())
    assert bench.cache.get_seq_length() == bench.context == 6 + 10
    assert bench.autoregressive(steps=3) == labels[:3]  # deterministic, restarts from the history


def test_scaled_baseline_times_both_ends(monkeypatch):
    """With ar_steps < N the baseline runs ar_steps at the start and ar_steps at the end (a cache of
    prompt + N - ar_steps), scales the mean step to N, and says so in the record."""
    from stamp.bench.mask_pass import MaskPassSettings, mask_pass_record

    model, processor = build_tiny_model(seed=6)
    bench = MaskPassBench(model, history=10, grid=(3, 4))
    end = bench.end_cache(5)
    assert end.get_seq_length() == bench.context + 12 - 5
    assert (
        len(bench.autoregressive(5, end)) == 5 and end.get_seq_length() == bench.context + 7
    )  # cropped back
    settings = MaskPassSettings(repeats=1, warmup=0, ar_repeats=1, ar_steps=5)
    rec = mask_pass_record(bench, settings, "fp32", 100.0)
    assert rec["autoregressive_scaled"] is True and rec["autoregressive_steps_measured"] == 5
    mean_step = (rec["autoregressive_step_ms_start"] + rec["autoregressive_step_ms_end"]) / 2
    assert rec["autoregressive_ms"] == pytest.approx(12 * mean_step, rel=1e-3)
    assert bench.cache.get_seq_length() == bench.context


def test_history_avoids_special_tokens():
    model, processor = build_tiny_model(seed=0)
    plain = set(plain_token_ids(model, processor.tokenizer).tolist())
    for special in (model.stamp.seg_token_id, model.stamp.mask_token_id, model.config.image_token_id):
        assert special not in plain


def test_grid_for():
    assert grid_for(64) == (8, 8) and grid_for(4096) == (64, 64) and grid_for(12) == (3, 4)
    assert grid_for(7) == (1, 7)
    with pytest.raises(ValueError):
        grid_for(0)


def test_flop_formulas():
    dims = TextDims(hidden=8, layers=2, heads=2, kv_heads=1, head_dim=4, intermediate=16, vocab=10)
    # per layer, Q=3 K=5: proj 2*3*8*8 + 4*3*8*4 + 2*3*8*8 = 1152, attn 4*3*5*8 = 480, mlp 6*3*8*16 = 2304
    assert forward_flops(dims, 3, 5) == 2 * (1152 + 480 + 2304)
    n, h = 4, 6
    stamp = mask_pass_flops(dims, n, h)
    assert stamp == forward_flops(dims, n + 1, h + n + 1) + 2 * 8 * 10 + 2 * 8 * n
    assert no_cache_flops(dims, n, h) == forward_flops(dims, h + n + 1, h + n + 1) + 2 * 8 * n
    assert (
        autoregressive_flops(dims, n, h)
        == sum(forward_flops(dims, 1, h + 1 + i) for i in range(n)) + n * 2 * 8 * 10
    )


def test_timing_statistics_and_budget():
    t = Timing.from_samples([3.0, 1.0, 2.0, 10.0])
    assert (t.median_ms, t.min_ms, t.max_ms, t.repeats) == (2.5, 1.0, 10.0, 4)
    assert t.q1_ms <= t.median_ms <= t.q3_ms
    calls = []
    timing = measure(lambda: calls.append(1), repeats=50, warmup=2, budget_s=0.0)
    assert timing.repeats == 1 and len(calls) == 3  # the budget stops after one timed run


def test_alternating_repeats():
    calls = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    timed = measure_alternating(fns, repeats=3, warmup=1)
    assert calls == ["a", "b"] * 4  # warm-up, then a b a b a b
    assert timed["a"].repeats == timed["b"].repeats == 3


def test_peak_memory_sees_a_large_allocation():
    peak = peak_memory(lambda: torch.ones(5_000_000, dtype=torch.float64).sum())  # 38 MiB
    if peak.method == "unavailable":
        pytest.skip("no /proc/self/status")
    assert peak.peak_mb >= (30 if peak.exact else 0)
