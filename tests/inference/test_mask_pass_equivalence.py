"""The mask pass at a `<|seg|>` (one forward of [`<|seg|>` ; placeholders] against the KV cache) equals
the uncached single forward of the whole conversation, in every attention mode and implementation, in
batches whose rows reach `<|seg|>` together or apart, and a padded batch equals each request alone."""

import numpy as np
import pytest
import torch
from helpers import full_recompute_logits, random_image

from stamp.inference import StampPredictor
from stamp.inference.generation import GenerationConfig, generate
from stamp.tiny import build_tiny_model


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("attention_mode", ["hybrid", "causal"])
def test_single_request_matches_full_recompute(attn, attention_mode):
    model, processor = build_tiny_model(seed=7, attn_implementation=attn, attention_mode=attention_mode)
    image = random_image(150, 230, 3)
    pred = StampPredictor(model, processor)
    pred.set_image(image)
    res = pred.chat("Segment it.", answer_prefix="A <|seg|> and <|seg|>", max_new_tokens=3)
    ref = full_recompute_logits(model, processor, image, "Segment it.", res.text)
    assert len(res.masks) == len(ref) == 2
    for got, want in zip(res.masks, ref):
        assert np.abs(got.patch_logits - want.numpy()).max() <= 1e-5


def _requests(pred, images, prompts, prefixes):
    out = []
    for image, prompt, prefix in zip(images, prompts, prefixes):
        enc = pred.processor.encode_image(image)
        with torch.no_grad():
            feats = pred.model.encode_images(enc.pixel_values, enc.grid_thw[None])[0]
        out.append(pred._request(enc, feats, prompt, None, prefix))
    return out


@pytest.mark.parametrize("prefixes", [("<|seg|>", "<|seg|>"), ("<|seg|>", "Well, <|seg|>")])
def test_batch_rows_at_seg_together_or_apart(prefixes):
    """Both rows at `<|seg|>` in the same step, or at different steps (masked-out placeholder slots for
    the other row): one mask-pass forward per step that has a `<|seg|>`, each row equal to its
    uncached forward."""
    model, processor = build_tiny_model(seed=8)
    pred = StampPredictor(model, processor)
    images = [random_image(224, 224, 4), random_image(224, 224, 5)]
    requests = _requests(pred, images, ["Segment the thing."] * 2, prefixes)
    placeholder_forwards = []  # forwards of more than one query after the prefill
    run = model.run_language_model

    def spy(embeds, pos, allowed, cache=None):
        if cache is not None and cache.get_seq_length() > 0 and embeds.shape[1] > 1:
            placeholder_forwards.append(allowed is not None)
        return run(embeds, pos, allowed, cache)

    model.run_language_model = spy
    outs = generate(model, requests, GenerationConfig(max_new_tokens=2), pred.pad_id, pred.eos_ids)
    together = prefixes[0] == prefixes[1]
    assert placeholder_forwards == ([True] if together else [True, True])  # always masked: the `<|seg|>` row
    for image, out in zip(images, outs):
        text = pred.processor.decode(out.token_ids)
        ref = full_recompute_logits(model, processor, image, "Segment the thing.", text)
        assert len(out.mask_logits) >= 1
        assert (out.mask_logits[0] - ref[0]).abs().max() <= 1e-5


def test_padded_batch_equals_each_request_alone():
    """Rows of different lengths and grids, at `<|seg|>` at different steps, with several masks or
    none: the batch gives each request's own tokens and masks, and the batch cache is left consistent
    for the free tokens that follow."""
    model, processor = build_tiny_model(seed=10)
    pred = StampPredictor(model, processor)
    items = [
        (random_image(160, 300, 6), "Segment the thing."),
        (random_image(260, 220, 7), "Segment every thing, and talk."),
        (random_image(200, 200, 8), "Hi"),
    ]
    prefixes = ["<|seg|> and <|seg|>", "Well, <|seg|>", "No"]
    alone = [
        pred.predict_batch([item], answer_prefix=prefix, max_new_tokens=4)[0]
        for item, prefix in zip(items, prefixes)
    ]
    requests = _requests(pred, [i for i, _ in items], [p for _, p in items], prefixes)
    outs = generate(model, requests, GenerationConfig(max_new_tokens=4), pred.pad_id, pred.eos_ids)
    for one, out in zip(alone, outs):
        assert one.token_ids == out.token_ids
        assert len(one.masks) == len(out.mask_logits)
        for a, b in zip(one.masks, out.mask_logits):
            assert np.abs(a.patch_logits - b.numpy()).max() <= 1e-5
    assert [len(o.mask_logits) for o in outs][:2] == [2, 1]
