"""The cached two-phase inference path against the uncached single-forward path."""

import numpy as np
import pytest
import torch
from helpers import full_recompute_logits, random_image

from stamp.inference import StampPredictor
from stamp.tiny import build_tiny_model


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("position_mode", ["grid", "text"])
def test_cached_mask_pass_equals_full_recompute(attn, position_mode):
    model, processor = build_tiny_model(seed=1, attn_implementation=attn, position_mode=position_mode)
    image = random_image(200, 300)
    pred = StampPredictor(model, processor)
    pred.set_image(image)
    res = pred.chat("Segment the box please.", answer_prefix="It is <|seg|> and <|seg|>", max_new_tokens=0)
    assert len(res.masks) == 2
    ref = full_recompute_logits(model, processor, image, "Segment the box please.", res.text)
    for got, want in zip(res.masks, ref):
        assert got.patch_logits.shape == tuple(want.shape)
        assert np.abs(got.patch_logits - want.numpy()).max() <= 1e-5


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_batched_with_padding_equals_single(attn):
    model, processor = build_tiny_model(seed=2, attn_implementation=attn)
    items = [
        (random_image(180, 250, 1), "Segment the thing."),
        (random_image(300, 200, 2), "A much longer prompt: segment it."),
    ]
    pred = StampPredictor(model, processor)
    batch = pred.predict_batch(items, answer_prefix="<|seg|>", max_new_tokens=4)
    for (image, prompt), res in zip(items, batch):
        assert len(res.masks) >= 1
        assert res.masks[0].mask.shape == (image.size[1], image.size[0])
        ref = full_recompute_logits(model, processor, image, prompt, res.text)
        assert np.abs(res.masks[0].patch_logits - ref[0].numpy()).max() <= 1e-5
        pred.set_image(image)
        single = pred.chat(prompt, answer_prefix="<|seg|>", max_new_tokens=4)
        assert single.text == res.text
        assert np.abs(single.masks[0].patch_logits - res.masks[0].patch_logits).max() <= 1e-5


def test_history_isolation_text_identical_with_and_without_masks(tiny_model, tiny_processor):
    pred = StampPredictor(tiny_model, tiny_processor)
    pred.set_image(random_image(224, 224, 3))
    with_masks = pred.chat("What is it?", answer_prefix="x <|seg|> y", max_new_tokens=24)
    without = pred.chat("What is it?", answer_prefix="x <|seg|> y", max_new_tokens=24, predict_masks=False)
    assert len(with_masks.masks) >= 1 and without.masks == []
    assert with_masks.token_ids == without.token_ids
    assert len(with_masks.token_ids) > len(
        tiny_processor._text_ids("x <|seg|> y")
    )  # free tokens were generated


def test_no_seg_gives_no_mask_and_vision_runs_once(tiny_model, tiny_processor):
    calls = []
    handle = tiny_model.model.visual.register_forward_hook(lambda *a: calls.append(1))
    try:
        pred = StampPredictor(tiny_model, tiny_processor)
        pred.set_image(random_image(224, 224, 4))
        plain = pred.chat("Hello?", answer_prefix="no mask here", max_new_tokens=0)
        assert plain.masks == [] and plain.text == "no mask here"
        two = pred.chat("Segment both.", answer_prefix="a <|seg|> b <|seg|>", max_new_tokens=0)
        assert len(two.masks) == 2
        assert len(calls) == 1  # two queries on one image: the vision tower ran once
    finally:
        handle.remove()


def test_free_generation_emits_seg_and_predicts_mask(tiny_model, tiny_processor):
    """A head that prefers <|seg|> at the first step then end-of-turn: a free <|seg|> triggers a mask."""
    seg, end = tiny_model.stamp.seg_token_id, tiny_processor.im_end_id
    real_head = tiny_model.lm_head

    class ScriptedHead(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.calls = 0

        def forward(self, h):
            logits = real_head(h)
            target = seg if self.calls == 0 else end
            self.calls += 1
            return logits.index_fill(-1, torch.tensor([target]), 1e4)

    tiny_model.lm_head = ScriptedHead()
    try:
        pred = StampPredictor(tiny_model, tiny_processor)
        pred.set_image(random_image(224, 224, 5))
        res = pred.chat("Segment it.", max_new_tokens=10)
    finally:
        tiny_model.lm_head = real_head
    assert res.text == "<|seg|>" and len(res.masks) == 1
    assert res.masks[0].mask.shape == (224, 224) and res.masks[0].mask.dtype == bool
    assert set(res.timings) >= {"vision", "prefill", "decode", "mask", "postprocess"}


def test_sampling_is_seeded(tiny_model, tiny_processor):
    pred = StampPredictor(tiny_model, tiny_processor)
    pred.set_image(random_image(224, 224, 6))
    a = pred.chat("Say something.", do_sample=True, seed=3, max_new_tokens=12, temperature=1.5)
    b = pred.chat("Say something.", do_sample=True, seed=3, max_new_tokens=12, temperature=1.5)
    assert a.token_ids == b.token_ids


def test_second_query_reports_no_vision_time(tiny_model, tiny_processor):
    pred = StampPredictor(tiny_model, tiny_processor)
    pred.set_image(random_image(224, 224, 7))
    first = pred.chat("One?", max_new_tokens=2)
    second = pred.chat("Two?", max_new_tokens=2)
    assert first.timings["vision"] > 0 and second.timings["vision"] == 0.0
    assert pred.vision_calls == 1
