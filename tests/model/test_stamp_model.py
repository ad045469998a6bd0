"""Properties of the STAMP forward: bidirectionality, grid alignment, gradients, persistence."""

import numpy as np
import pytest
import torch
from helpers import random_image

from stamp.data.sample import StampSample, Turn
from stamp.inference import StampPredictor
from stamp.model.modeling import StampModel
from stamp.tiny import build_tiny_model, tiny_processor


def _batch(model, answer="It is <|seg|>.", image=None, n_masks=1):
    image = image or random_image(224, 224, 7)
    masks = [np.pad(np.ones((60, 80), np.uint8), ((40, 124), (30, 114)))] * n_masks
    sample = StampSample("t", image, [Turn("user", "Segment."), Turn("assistant", answer)], masks)
    processor = tiny_processor()
    return processor.collate([processor.encode_sample(sample)])


def _logits_with_features(model, batch, feats):
    """Mask logits with the vision features replaced by `feats` (N, H)."""
    orig = model.encode_images
    model.encode_images = lambda pv, grid: [feats]
    try:
        return model.stamp_forward(**batch).mask_logits[0]
    finally:
        model.encode_images = orig


@pytest.mark.parametrize("mode,expect_change", [("hybrid", True), ("causal", False)])
def test_bidirectionality(mode, expect_change):
    model, processor = build_tiny_model(seed=3, attention_mode=mode)
    batch = _batch(model)
    orig = model.mask_embeddings
    with torch.no_grad():
        base = model.stamp_forward(**batch).mask_logits[0]
        # change the LAST placeholder's input only (the image tokens of the prompt stay as they are)
        model.mask_embeddings = lambda f: (
            orig(f) + torch.nn.functional.one_hot(torch.tensor(f.shape[0] - 1), f.shape[0])[:, None] * 5.0
        )
        try:
            new = model.stamp_forward(**batch).mask_logits[0]
        finally:
            model.mask_embeddings = orig
    first_moved = abs(float(new[0] - base[0])) > 1e-4
    assert first_moved == expect_change
    assert abs(float(new[-1] - base[-1])) > 1e-4  # the last one itself always moves


def test_grid_alignment_each_placeholder_reads_its_own_cell(tiny_model):
    batch = _batch(tiny_model)
    feats = tiny_model.encode_images(batch["pixel_values"], batch["image_grid_thw"])[0].detach().clone()
    feats.requires_grad_(True)
    logits = _logits_with_features(tiny_model, batch, feats)
    n = logits.shape[0]
    influence = torch.stack(
        [torch.autograd.grad(logits[i], feats, retain_graph=True)[0].norm(dim=-1) for i in range(n)]
    )
    assert torch.equal(influence.argmax(dim=1), torch.arange(n))  # placeholder i depends most on cell i
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        permuted = _logits_with_features(tiny_model, batch, feats.detach()[perm])
    # moving features to other cells moves their influence: logits are no longer the same
    assert not torch.allclose(permuted, logits.detach(), atol=1e-4)


def test_plain_mask_embedding_ignores_visual_features():
    model, processor = build_tiny_model(seed=4, mask_embedding="plain")
    batch = _batch(model)
    with torch.no_grad():
        feats = model.encode_images(batch["pixel_values"], batch["image_grid_thw"])[0]
        emb = model.mask_embeddings(feats)
    assert torch.equal(emb, model.get_input_embeddings().weight[model.stamp.mask_token_id].expand_as(emb))


def test_gradients_reach_head_mask_embedding_and_backbone():
    model, processor = build_tiny_model(seed=5)
    model.train()
    out = model.stamp_forward(**_batch(model, answer="a <|seg|> b <|seg|>", n_masks=2))
    assert out.mask_logits.shape[0] == 2 and out.text_loss is not None and out.bce_loss is not None
    out.loss.backward()
    emb_grad = model.get_input_embeddings().weight.grad
    assert model.classifier.weight.grad.abs().sum() > 0
    assert emb_grad[model.stamp.mask_token_id].abs().sum() > 0
    assert model.model.language_model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    assert model.model.visual.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


def test_vision_tower_runs_once_per_training_sample():
    model, processor = build_tiny_model(seed=6)
    calls = []
    handle = model.model.visual.register_forward_hook(lambda *a: calls.append(1))
    model.stamp_forward(**_batch(model, answer="a <|seg|> b <|seg|> c <|seg|>", n_masks=3))
    handle.remove()
    assert len(calls) == 1


def test_save_load_roundtrip_identical_logits(tmp_path, tiny_model, tiny_processor):
    tiny_model.save_stamp(tmp_path / "m", tiny_processor)
    loaded = StampModel.from_pretrained(tmp_path / "m")
    assert loaded.stamp == tiny_model.stamp and loaded.config.stamp == tiny_model.config.stamp
    image = random_image(210, 190, 8)
    results = []
    for m, processor in ((tiny_model, tiny_processor), (loaded, None)):
        p = StampPredictor(m, processor)
        p.set_image(image)
        results.append(p.chat("Segment.", answer_prefix="<|seg|>", max_new_tokens=5))
    assert results[0].token_ids == results[1].token_ids
    np.testing.assert_allclose(results[0].masks[0].patch_logits, results[1].masks[0].patch_logits, atol=1e-6)
    with pytest.raises(Exception, match="exists"):
        tiny_model.save_stamp(tmp_path / "m", tiny_processor)


def test_qwen2_5_vl_backbone():
    model, processor = build_tiny_model(seed=7, family="qwen2_5_vl")
    out = model.stamp_forward(**_batch(model))
    assert torch.isfinite(out.loss)
    pred = StampPredictor(model, processor)
    image = random_image(224, 224, 9)
    pred.set_image(image)
    res = pred.chat("Segment.", answer_prefix="<|seg|>", max_new_tokens=3)
    from helpers import full_recompute_logits

    ref = full_recompute_logits(model, processor, image, "Segment.", res.text)
    assert np.abs(res.masks[0].patch_logits - ref[0].numpy()).max() <= 1e-5
