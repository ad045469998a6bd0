"""The stage bounds of `stamp bench`'s request records (`stamp.bench.stages`): the analytic vision FLOPs
against the matmul work torch counts on tiny models of both families, shares for a made-up timing, and
the report's table."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

from stamp.bench.flops import TextDims, forward_flops, head_flops
from stamp.bench.report import render, stages_table
from stamp.bench.stages import (
    STAGE_NAMES,
    VisionDims,
    decode_bytes,
    prefill_flops,
    stage_bounds,
    vision_flops,
    weight_bytes_per_token,
)
from stamp.model.build import build_model
from stamp.tiny import TINY, build_tiny_model, tiny_processor


def _counted_vision_flops(model, processor, size: tuple[int, int]) -> tuple[int, dict, tuple[int, int]]:
    """(FLOPs torch's flop counter sees in the vision tower + merger, by op, (patches_h, patches_w))."""
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))
    enc = processor.encode_image(image)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.encode_images(enc.pixel_values, enc.grid_thw[None])
    by_op = {str(k): v for k, v in counter.get_flop_counts()["Global"].items()}
    return counter.get_total_flops(), by_op, (int(enc.grid_thw[1]), int(enc.grid_thw[2]))


def test_vision_flops_match_counted_work_qwen2_vl():
    model, processor = build_tiny_model(attn_implementation="eager")  # eager: attention as bmm
    counted, by_op, (ph, pw) = _counted_vision_flops(model, processor, (224, 168))
    assert "aten.bmm" in by_op, by_op  # the attention products are in the count
    dims = VisionDims.from_config(model.config.vision_config)
    assert dims.window_cells is None and not dims.gated_mlp
    assert vision_flops(dims, ph, pw) == pytest.approx(counted, rel=0.03)


def test_vision_flops_match_counted_work_qwen2_5_vl_windows():
    """Two blocks, the first windowed, on an image of 10 x 6 cells: windows of 4 x 4 cells, the last
    row and column of windows cut at the edge."""
    processor = tiny_processor(max_cells=128)
    arch = replace(TINY, family="qwen2_5_vl", vision_depth=2, vision_fullatt_blocks=[1])
    model = build_model(processor.tokenizer, arch, attn_implementation="eager")
    counted, by_op, (ph, pw) = _counted_vision_flops(model, processor, (280, 168))
    assert (ph, pw) == (12, 20)
    dims = VisionDims.from_config(model.config.vision_config)
    assert dims.window_cells == 4 and dims.full_blocks == (1,) and dims.gated_mlp
    assert "aten.bmm" in by_op, by_op
    assert vision_flops(dims, ph, pw) == pytest.approx(counted, rel=0.03)
    full = replace(dims, window_cells=None)
    assert vision_flops(full, ph, pw) > vision_flops(dims, ph, pw)  # the windows save attention


def test_prefill_flops_counts_causal_pairs():
    dims = TextDims.from_model(build_tiny_model()[0])
    length = 50
    dense = forward_flops(dims, length, length) + head_flops(dims, 1, 0)
    no_attn = forward_flops(dims, length, 0) + head_flops(dims, 1, 0)
    # the causal pairs are L (L + 1) / 2 of the L^2 that a dense count has
    assert prefill_flops(dims, length) - no_attn == (dense - no_attn) * (length + 1) // (2 * length)


def test_decode_bytes_are_the_weights_per_step_and_the_cache():
    model, _ = build_tiny_model()
    dims = TextDims.from_model(model)
    weights = weight_bytes_per_token(model)
    embed = model.get_input_embeddings().weight
    lm_params = sum(p.numel() for p in model.model.language_model.parameters())
    # the embedding table is not read per token; the lm_head is (tied or not)
    assert weights == 4 * (lm_params - embed.numel() + model.lm_head.weight.numel())
    kv_entry = 2 * dims.layers * dims.kv_heads * dims.head_dim * 4
    assert decode_bytes(model, dims, 3, 10) == 3 * weights + kv_entry * (11 + 12 + 13)


def _fake_record() -> dict:
    ms = {"vision": 40.0, "prefill": 100.0, "decode": 30.0, "mask": 80.0}
    work = {
        "vision_flops": 2e9,
        "prefill_flops": 5e9,
        "decode_flops": 1e8,
        "decode_bytes": 6e8,
        "mask_flops": 3e9,
    }
    ref = {"matmul_dtype": "bfloat16", "matmul_gflops": 100.0, "bandwidth_gbs": 40.0}
    return {
        "device": "cpu",
        "dtype": "bf16",
        "image_side": 896,
        "stages": stage_bounds(ms, work, ref["matmul_gflops"], ref["bandwidth_gbs"]),
        "bounds_reference": ref,
    }


def test_shares_are_bound_over_measured():
    stages = _fake_record()["stages"]
    assert list(stages) == list(STAGE_NAMES)
    assert stages["vision"]["bound_ms"] == pytest.approx(20.0)  # 2 GFLOP at 100 GFLOP/s
    assert stages["decode"]["bound_by"] == "bandwidth"  # 0.6 GB at 40 GB/s = 15 ms > 1 ms of FLOPs
    assert stages["decode"]["bound_ms"] == pytest.approx(15.0)
    for st in stages.values():
        assert 0 < st["share"] <= 1
        assert st["share"] == pytest.approx(st["bound_ms"] / st["ms"])
    none = stage_bounds({}, {f"{s}_flops": 1.0 for s in STAGE_NAMES} | {"decode_bytes": 1.0}, 1.0, 1.0)
    assert all(st["share"] is None for st in none.values())  # nothing measured: no share


@pytest.mark.parametrize("markdown", [False, True])
def test_report_prints_the_stage_table(markdown):
    rec = _fake_record()
    table = stages_table({"request": [rec]}, markdown=markdown)
    for word in ("stage", "bound ms", "% of bound", "GFLOP", "GB read", *STAGE_NAMES):
        assert word in table
    assert "40.0 GB/s" in table and "100.0 GFLOP/s bfloat16" in table
    assert ("| cpu | bf16 | 896x896 | vision | 40.0 |" in table) == markdown
    vision = next(line for line in table.splitlines() if "vision" in line)
    assert "50" in vision  # 20 ms of 40 ms: 50 %
    # render() shows it under the request latency
    doc = {
        "machine": {"cpu": "x", "cpus_allowed": 2, "devices": ["cpu"], "torch": "t", "torch_threads": 2,
                    "transformers": "t", "date": "d"},
        "model": {"name": "m", "family": "f", "text": {"hidden": 1, "layers": 1}, "random_weights": True},
        "request": [{**rec, "first_query_ms": {}, "second_query_ms": {}}],
    }  # fmt: skip
    assert "request stages against their bounds" in render(doc, markdown=markdown)
