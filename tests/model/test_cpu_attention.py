"""The CPU matmul attention (`stamp.model.cpu_attention`): the same attention as sdpa for the calls it
takes, sdpa itself for every other call, and the mask pass it serves gives sdpa's masks."""

import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import full_recompute_logits, random_image
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from stamp.inference import StampPredictor
from stamp.inference.generation import (
    CPU_HALF_ONE_FORWARD_MAX_N,
    CPU_ONE_FORWARD_MAX_N,
    MASK_PASS_ENV,
    mask_pass_form,
)
from stamp.model import cpu_attention
from stamp.model.cpu_attention import ENV, NAME, cpu_matmul_attention, matmul_attention
from stamp.model.modeling import StampModel


def _module(training=False, is_causal=True, groups=2):
    return types.SimpleNamespace(training=training, is_causal=is_causal, num_key_value_groups=groups)


def _qkv(q_len, k_len, dtype, heads=4, kv_heads=2, dim=16, seed=0, bsz=1):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(bsz, heads, q_len, dim, generator=g)
    k = torch.randn(bsz, kv_heads, k_len, dim, generator=g)
    v = torch.randn(bsz, kv_heads, k_len, dim, generator=g)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def _reference(q, k, v, scaling):
    """fp32 attention with each query head's key/value head repeated (as transformers lays out GQA)."""
    groups = q.shape[1] // k.shape[1]
    k, v = (t.float().repeat_interleave(groups, dim=1) for t in (k, v))
    out = F.scaled_dot_product_attention(q.float(), k, v, scale=scaling)
    return out.transpose(1, 2)  # (B, Q, heads, D)


@pytest.mark.parametrize("chunk", [1 << 19, 97])  # one chunk; many, with a ragged last one
@pytest.mark.parametrize("q_len,k_len,bsz", [(16, 16, 1), (40, 73, 2), (130, 300, 1)])
def test_matmul_attention_equals_attention(q_len, k_len, bsz, chunk, monkeypatch):
    monkeypatch.setattr(cpu_attention, "CHUNK_ELEMENTS", chunk)
    monkeypatch.delenv(ENV, raising=False)
    q, k, v = _qkv(q_len, k_len, torch.bfloat16, bsz=bsz)
    out, weights = matmul_attention(_module(), q, k, v, None, scaling=0.3, is_causal=False)
    assert weights is None and out.shape == (bsz, q_len, 4, 16) and out.dtype == torch.bfloat16
    ref = _reference(q, k, v, 0.3)
    err = (out.float() - ref).abs().max().item()
    sdpa_err = (
        ALL_ATTENTION_FUNCTIONS["sdpa"](_module(), q, k, v, None, scaling=0.3, is_causal=False)[0].float()
        - ref
    )
    assert err <= 2e-2 and err <= 4 * sdpa_err.abs().max().item() + 1e-2  # bf16 rounding, like sdpa's
    monkeypatch.setenv(ENV, "matmul")  # fp32 on request: the same numbers up to float rounding
    q32, k32, v32 = (t.float() for t in (q, k, v))
    out32, _ = matmul_attention(_module(), q32, k32, v32, None, scaling=0.3, is_causal=False)
    assert (out32 - _reference(q32, k32, v32, 0.3)).abs().max().item() <= 1e-5


def test_calls_it_does_not_cover_go_to_sdpa(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    q, k, v = _qkv(32, 48, torch.bfloat16)
    mask = torch.rand(1, 1, 32, 48) > 0.3
    mask[..., 0] = True
    cases = [
        (dict(attention_mask=mask, is_causal=False), q),  # a mask
        (dict(attention_mask=None, is_causal=True), q),  # causal
        (dict(attention_mask=None, is_causal=None), q),  # causal by the module's default
        (dict(attention_mask=None, is_causal=False), q[:, :, :4]),  # too few queries (a decode step)
        (dict(attention_mask=None, is_causal=False), q.float()),  # fp32
    ]
    for kwargs, query in cases:
        kv = (k.float(), v.float()) if query.dtype == torch.float32 else (k, v)
        got, _ = matmul_attention(_module(), query, *kv, scaling=0.25, **kwargs)
        want, _ = sdpa(_module(), query, *kv, scaling=0.25, **kwargs)
        assert torch.equal(got, want), kwargs
    qg = q.clone().requires_grad_(True)  # gradients: sdpa's backward
    got, _ = matmul_attention(_module(), qg, k, v, None, scaling=0.25, is_causal=False)
    assert torch.equal(got, sdpa(_module(), qg, k, v, None, scaling=0.25, is_causal=False)[0])
    assert got.requires_grad
    monkeypatch.setenv(ENV, "flash")
    with pytest.raises(ValueError, match=ENV):
        matmul_attention(_module(), q, k, v, None, scaling=0.25, is_causal=False)


def test_switch_is_scoped_and_restored(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    cfg = types.SimpleNamespace(_attn_implementation="sdpa")
    with cpu_matmul_attention(cfg, "cpu"):
        assert cfg._attn_implementation == NAME
    assert cfg._attn_implementation == "sdpa"
    with pytest.raises(RuntimeError), cpu_matmul_attention(cfg, "cpu"):
        raise RuntimeError("inside")
    assert cfg._attn_implementation == "sdpa"
    for impl, device, env in [("sdpa", "cuda", "auto"), ("eager", "cpu", "auto"), ("sdpa", "cpu", "sdpa")]:
        monkeypatch.setenv(ENV, env)
        cfg = types.SimpleNamespace(_attn_implementation=impl)
        with cpu_matmul_attention(cfg, device):
            assert cfg._attn_implementation == impl


def test_bf16_mask_pass_takes_the_matmul_path_and_keeps_the_masks(monkeypatch):
    """The two-forward mask pass of a bf16 model on the CPU goes through the matmul attention and gives
    the masks of sdpa (up to bf16 rounding); in fp32 (forced) it equals the uncached forward."""
    monkeypatch.setenv(MASK_PASS_ENV, "two_forward")
    taken = []
    covers = cpu_attention._covers

    def spy(*args):
        ok = covers(*args)
        taken.append(ok)
        return ok

    monkeypatch.setattr(cpu_attention, "_covers", spy)
    image = random_image(224, 280, 3)  # 7 x 8 cells at the tiny processor's sizes: 56 placeholders
    logits = {}
    for env in ("sdpa", "auto"):
        monkeypatch.setenv(ENV, env)
        taken.clear()
        model = StampModel.tiny(seed=11).to(torch.bfloat16)
        pred = StampPredictor(model)
        pred.set_image(image)
        res = pred.chat("Segment it.", answer_prefix="<|seg|>", max_new_tokens=2)
        logits[env] = res.masks[0].patch_logits
        assert (sum(taken) > 0) == (env == "auto")  # the placeholder forward, once per layer
    assert logits["auto"].shape == logits["sdpa"].shape == (7, 8)
    scale = np.abs(logits["sdpa"]).max()
    assert np.abs(logits["auto"] - logits["sdpa"]).max() <= 0.05 * scale + 0.05
    monkeypatch.setenv(ENV, "matmul")
    model = StampModel.tiny(seed=11)
    taken.clear()
    pred = StampPredictor(model)
    pred.set_image(image)
    res = pred.chat("Segment it.", answer_prefix="<|seg|>", max_new_tokens=2)
    assert sum(taken) > 0
    ref = full_recompute_logits(model, image, "Segment it.", res.text)
    assert np.abs(res.masks[0].patch_logits - ref[0].numpy()).max() <= 1e-5


def test_mask_pass_form_in_half_precision(monkeypatch):
    monkeypatch.delenv(MASK_PASS_ENV, raising=False)
    monkeypatch.delenv(ENV, raising=False)
    n = CPU_HALF_ONE_FORWARD_MAX_N
    assert n < CPU_ONE_FORWARD_MAX_N
    assert mask_pass_form("cpu", n, masked=False, dtype=torch.bfloat16) == "one_forward"
    assert mask_pass_form("cpu", n + 1, masked=False, dtype=torch.bfloat16) == "two_forward"
    assert mask_pass_form("cpu", n + 1, masked=False, dtype=torch.float32) == "one_forward"
    assert mask_pass_form("cpu", n + 1, masked=True, dtype=torch.bfloat16) == "one_forward"
    monkeypatch.setenv(ENV, "sdpa")  # no matmul attention: the sdpa threshold
    assert mask_pass_form("cpu", n + 1, masked=False, dtype=torch.bfloat16) == "one_forward"
