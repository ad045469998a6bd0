"""The vision tower attends in one call per distinct image size (stamp.model.vision_attention) and
computes what transformers' image-by-image loop computes, forward and backward."""

import pytest
import torch
from helpers import random_image

import stamp.model.vision_attention as va
from stamp.model.modeling import StampModel


def _inputs(model, sizes):
    encs = [model.processor.encode_image(random_image(h, w, seed=i)) for i, (h, w) in enumerate(sizes)]
    return torch.cat([e.pixel_values for e in encs]), torch.stack([e.grid_thw for e in encs])


def _features_and_grads(model, pv, grid, monkeypatch, mode):
    monkeypatch.setenv(va.ENV, mode)
    model.zero_grad()
    feats = model.encode_images(pv, grid)
    torch.cat(feats).pow(2).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return [f.detach() for f in feats], grads


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl"])
@pytest.mark.parametrize(
    "sizes", [[(112, 112), (112, 112), (112, 112)], [(112, 112), (168, 112), (112, 112), (140, 196)]]
)
@pytest.mark.parametrize("min_per_length", [1, 4])
def test_packed_matches_per_image(family, sizes, min_per_length, monkeypatch):
    monkeypatch.setattr(va, "MIN_SEGMENTS_PER_LENGTH", min_per_length)
    va._group_plan.cache_clear()
    model = StampModel.tiny(seed=3, family=family, vision_depth=2).train()
    assert model.config.vision_config._attn_implementation == "sdpa"
    pv, grid = _inputs(model, sizes)
    ref, ref_grads = _features_and_grads(model, pv, grid, monkeypatch, "per_image")
    calls = []
    real = va.F.scaled_dot_product_attention
    monkeypatch.setattr(
        va.F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    out, grads = _features_and_grads(model, pv, grid, monkeypatch, "packed")
    assert calls, "the packed path was not taken"
    assert model.config.vision_config._attn_implementation == "sdpa"  # restored after the call
    for a, b in zip(ref, out):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert ref_grads.keys() == grads.keys() and any("visual" in n for n in grads)
    for name in ref_grads:
        torch.testing.assert_close(ref_grads[name], grads[name], atol=1e-5, rtol=1e-4)
    if family == "qwen2_vl":
        distinct = len(set(sizes))
        grouped = distinct == 1 or len(sizes) >= min_per_length * distinct  # (one size: always one call)
        # grouped: one call per distinct image size and layer; else one per image and layer
        assert len(calls) == 2 * (distinct if grouped else len(sizes))
        if grouped and distinct > 1:  # the gather plan is built once and reused by the second layer
            info = va._group_plan.cache_info()
            assert (info.misses, info.hits) == (1, 1)


def test_restores_the_config_on_error(monkeypatch):
    model = StampModel.tiny(seed=0, vision_depth=2)
    pv, grid = _inputs(model, [(112, 112)])

    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(va.F, "scaled_dot_product_attention", boom)
    monkeypatch.setenv(va.ENV, "packed")
    with pytest.raises(RuntimeError, match="boom"):
        model.encode_images(pv, grid)
    assert model.config.vision_config._attn_implementation == "sdpa"
    monkeypatch.undo()
    with torch.no_grad():
        assert len(model.encode_images(pv, grid)) == 1


def test_refuses_masks_and_mismatched_segments():
    q = torch.randn(1, 2, 6, 4)
    cu = torch.tensor([0, 2, 6])
    mod = torch.nn.Module()
    with pytest.raises(ValueError, match="no mask"):
        va.packed_vision_attention(mod, q, q, q, attention_mask=torch.ones(1, 1, 6, 6), cu_seq_lens_q=cu)
    with pytest.raises(ValueError, match="cover 7 tokens"):
        va.packed_vision_attention(mod, q, q, q, cu_seq_lens_q=torch.tensor([0, 3, 7]))
    out, _ = va.packed_vision_attention(mod, q, q, q, cu_seq_lens_q=cu, scaling=0.5)
    ref = torch.cat(
        [
            torch.nn.functional.scaled_dot_product_attention(
                q[:, :, a:b], q[:, :, a:b], q[:, :, a:b], scale=0.5
            )
            for a, b in ((0, 2), (2, 6))
        ],
        dim=2,
    )
    torch.testing.assert_close(out, ref.transpose(1, 2))


def test_mode_choice(monkeypatch):
    monkeypatch.delenv(va.ENV, raising=False)
    assert not va.use_packed("cpu") and va.use_packed("cuda:0")  # auto: packed on accelerators only
    monkeypatch.setenv(va.ENV, "packed")
    assert va.use_packed("cpu")
    monkeypatch.setenv(va.ENV, "per_image")
    assert not va.use_packed("cuda")
    monkeypatch.setenv(va.ENV, "sometimes")
    with pytest.raises(ValueError, match="STAMP_VISION_ATTENTION must be one of"):
        va.use_packed("cpu")
