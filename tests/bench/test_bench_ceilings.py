"""The stages' kernels timed alone (`stamp.bench.ceilings`) are exactly each stage's counted work: with
every kernel's time replaced by its FLOPs, a stage's ceiling equals its analytic FLOPs
(`stamp.bench.stages`), on tiny models of both families, so no kernel is left out or counted twice."""

from dataclasses import replace

import pytest
import torch

from stamp.bench import ceilings
from stamp.bench.flops import TextDims, mask_pass_flops
from stamp.bench.stages import VisionDims, decode_flops, prefill_flops, request_work, vision_flops
from stamp.model.build import build_model
from stamp.tiny import TINY, build_tiny_model, tiny_processor


class _CountingF:
    """Stands in for torch.nn.functional in `ceilings`: counts the FLOPs of linear and sdpa calls."""

    def __init__(self):
        self.flops = 0

    def linear(self, x, w):
        self.flops += 2 * x.shape[0] * w.shape[0] * w.shape[1]

    def scaled_dot_product_attention(self, q, k, v, attn_mask=None, is_causal=False, enable_gqa=False):
        b, h, lq, d = q.shape
        pairs = lq * (lq + 1) // 2 if is_causal else lq * k.shape[2]
        self.flops += 2 * 2 * b * h * pairs * d


@pytest.fixture
def counting(monkeypatch):
    fake = _CountingF()
    monkeypatch.setattr(ceilings, "F", fake)

    def ms(self, fn):
        before = fake.flops
        fn()
        return fake.flops - before

    monkeypatch.setattr(ceilings._Timer, "ms", ms)
    return ceilings._Timer(torch.float32, torch.device("cpu"), repeats=1)


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
def test_vision_ceiling_issues_the_counted_work(counting, family):
    if family == "qwen2_vl":
        model, _ = build_tiny_model()
    else:  # the first block windowed: windows of 4 x 4 cells, cut at the image's edge
        arch = replace(TINY, family="qwen2_5_vl", vision_depth=2, vision_fullatt_blocks=[1])
        model = build_model(tiny_processor().tokenizer, arch)
    vc = model.config.vision_config
    dims = VisionDims.from_config(vc)
    for hw in [(8, 8), (12, 20), (10, 14)]:
        got = ceilings.vision_ceiling(dims, vc.num_heads, hw, counting)
        assert got == vision_flops(dims, *hw), hw


def test_text_ceilings_issue_the_counted_work(counting):
    model, _ = build_tiny_model()
    dims = TextDims.from_model(model)
    assert ceilings.prefill_ceiling(dims, 37, counting) == prefill_flops(dims, 37)
    assert ceilings.mask_ceiling(dims, 16, 37, counting) == mask_pass_flops(dims, 16, 37)
    for steps in (1, 5, 9):  # odd: the middle step's context stands exactly for all of them
        assert ceilings.decode_ceiling(dims, steps, 38, counting) == decode_flops(dims, steps, 38)


def test_stage_ceilings_follow_the_request_work(counting):
    model, _ = build_tiny_model()
    work = request_work(model, (8, 6), prompt_length=40, decode_steps=3, cells=12)
    got = ceilings.stage_ceilings(model, work, torch.float32)
    assert got == {
        "vision": work.vision_flops,
        "prefill": work.prefill_flops,
        "decode": work.decode_flops,
        "mask": work.mask_flops,
    }
