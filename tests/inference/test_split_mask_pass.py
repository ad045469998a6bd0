"""The mask pass runs in one of two forms (`mask_pass_form`): one masked forward of [`<|seg|>` ;
placeholders], or a `<|seg|>` decode step plus an (often unmasked) placeholder forward. Each form must
equal the uncached single forward in every mode, and in batches where only some rows are at a
`<|seg|>` (masked path) or all are (unmasked path)."""

import numpy as np
import pytest
import torch
from helpers import full_recompute_logits, random_image

from stamp.inference import StampPredictor
from stamp.inference.generation import (
    CPU_ONE_FORWARD_MAX_N,
    CPU_PER_ROW_MIN_GFLOP,
    MASK_PASS_ENV,
    GenerationConfig,
    generate,
    mask_pass_form,
)
from stamp.model.modeling import StampModel

FORMS = ["one_forward", "two_forward", "per_row"]


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("attention_mode", ["hybrid", "causal"])
def test_single_request_matches_full_recompute(attn, attention_mode, form, monkeypatch):
    monkeypatch.setenv(MASK_PASS_ENV, form)
    model = StampModel.tiny(seed=7, attn_implementation=attn, attention_mode=attention_mode)
    image = random_image(150, 230, 3)
    pred = StampPredictor(model)
    pred.set_image(image)
    res = pred.chat("Segment it.", answer_prefix="A <|seg|> and <|seg|>", max_new_tokens=3)
    ref = full_recompute_logits(model, image, "Segment it.", res.text)
    assert len(res.masks) == len(ref) == 2
    for got, want in zip(res.masks, ref):
        assert np.abs(got.patch_logits - want.numpy()).max() <= 1e-5


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("prefixes", [("<|seg|>", "<|seg|>"), ("<|seg|>", "Well, <|seg|>")])
def test_batch_rows_at_seg_together_or_apart(prefixes, form, monkeypatch):
    """Same-size images without padding (both rows at `<|seg|>` together: no mask for the two-forward
    form) and rows reaching `<|seg|>` at different steps (masked placeholder slots for the other row)."""
    monkeypatch.setenv(MASK_PASS_ENV, form)
    model = StampModel.tiny(seed=8)
    pred = StampPredictor(model)
    images = [random_image(224, 224, 4), random_image(224, 224, 5)]
    requests = []
    for image, prefix in zip(images, prefixes):
        enc = pred.processor.encode_image(image)
        with torch.no_grad():
            feats = model.encode_images(enc.pixel_values, enc.grid_thw[None])[0]
        requests.append(pred._request(enc, feats, "Segment the thing.", None, prefix))
    placeholder_masks = []  # for each placeholder forward (Q > 1 after the prefill): was a mask used?
    run = model.run_language_model

    def spy(embeds, pos, allowed, cache=None):
        if cache is not None and cache.get_seq_length() > 0 and embeds.shape[1] > 1:
            placeholder_masks.append(allowed is not None)
        return run(embeds, pos, allowed, cache)

    monkeypatch.setattr(model, "run_language_model", spy)
    outs = generate(model, requests, GenerationConfig(max_new_tokens=2), pred.pad_id, pred.eos_ids)
    together = prefixes[0] == prefixes[1]
    if form == "two_forward":
        assert placeholder_masks == ([False] if together else [True, True])
    elif form == "per_row":  # each row at `<|seg|>` alone, against its own unpadded cache: never a mask
        assert placeholder_masks == [False, False]
    else:  # the `<|seg|>` row must not see the placeholders: always masked, one forward per mask step
        assert placeholder_masks == ([True] if together else [True, True])
    for image, out in zip(images, outs):
        text = pred.processor.decode(out.token_ids)
        ref = full_recompute_logits(model, image, "Segment the thing.", text)
        assert len(out.mask_logits) >= 1
        assert (out.mask_logits[0] - ref[0]).abs().max() <= 1e-5


def test_both_forms_give_the_same_answer_and_masks(monkeypatch):
    """Padding, different grids and free tokens after the mask: the forms agree on everything."""
    model = StampModel.tiny(seed=9)
    pred = StampPredictor(model)
    items = [
        (random_image(180, 250, 1), "Segment the thing."),
        (random_image(300, 200, 2), "A longer prompt."),
    ]
    results = {}
    for form in FORMS:
        monkeypatch.setenv(MASK_PASS_ENV, form)
        results[form] = pred.predict_batch(items, answer_prefix="<|seg|>", max_new_tokens=6)
    for form in FORMS[1:]:
        for one, two in zip(results["one_forward"], results[form]):
            assert one.token_ids == two.token_ids
            assert len(one.masks) == len(two.masks) >= 1
            for a, b in zip(one.masks, two.masks):
                assert np.abs(a.patch_logits - b.patch_logits).max() <= 1e-5


def test_per_row_leaves_the_batch_cache_and_other_rows_alone(monkeypatch):
    """Rows at `<|seg|>` at different steps, with several masks each, in a padded batch: the per-row
    form matches each request run alone (batch 1), token for token and mask for mask."""
    monkeypatch.setenv(MASK_PASS_ENV, "one_forward")  # the references: each request alone, one forward
    model = StampModel.tiny(seed=10)
    pred = StampPredictor(model)
    items = [
        (random_image(160, 300, 6), "Segment the thing."),
        (random_image(260, 220, 7), "Segment every thing, and talk."),
        (random_image(200, 200, 8), "Hi"),
    ]
    prefixes = ["<|seg|> and <|seg|>", "Well, <|seg|>", "No"]
    batch = [
        pred.predict_batch([item], answer_prefix=prefix, max_new_tokens=4)[0]
        for item, prefix in zip(items, prefixes)
    ]
    monkeypatch.setenv(MASK_PASS_ENV, "per_row")
    requests = []
    for (image, prompt), prefix in zip(items, prefixes):
        enc = pred.processor.encode_image(image)
        with torch.no_grad():
            feats = model.encode_images(enc.pixel_values, enc.grid_thw[None])[0]
        requests.append(pred._request(enc, feats, prompt, None, prefix))
    outs = generate(model, requests, GenerationConfig(max_new_tokens=4), pred.pad_id, pred.eos_ids)
    for alone, out in zip(batch, outs):
        assert alone.token_ids == out.token_ids
        assert len(alone.masks) == len(out.mask_logits)
        for a, b in zip(alone.masks, out.mask_logits):
            assert np.abs(a.patch_logits - b.numpy()).max() <= 1e-5
    assert [len(o.mask_logits) for o in outs][:2] == [2, 1]


def test_mask_pass_form_policy(monkeypatch):
    monkeypatch.delenv(MASK_PASS_ENV, raising=False)
    n = CPU_ONE_FORWARD_MAX_N
    assert mask_pass_form("cpu", n, masked=False) == "one_forward"
    assert mask_pass_form("cpu", n + 1, masked=False) == "two_forward"
    assert mask_pass_form("cpu", 4 * n, masked=True) == "one_forward"  # a mask either way: one pass
    assert mask_pass_form("cpu", n, masked=True, rows=2) == "per_row"  # a padded batch: row by row
    assert mask_pass_form("cpu", n, masked=True, rows=2, padded_gflop=CPU_PER_ROW_MIN_GFLOP) == "per_row"
    assert mask_pass_form("cpu", n, masked=True, rows=2, padded_gflop=0.1) == "one_forward"  # overhead-bound
    assert mask_pass_form("cuda", n, masked=True, rows=2) == "one_forward"
    assert mask_pass_form("cuda", 4 * n, masked=False) == "one_forward"
    monkeypatch.setenv(MASK_PASS_ENV, "two_forward")
    assert mask_pass_form("cuda", 1, masked=True) == "two_forward"
    monkeypatch.setenv(MASK_PASS_ENV, "One_Forward ")
    assert mask_pass_form("cpu", 10 * n, masked=False) == "one_forward"
    monkeypatch.setenv(MASK_PASS_ENV, "fused")
    with pytest.raises(ValueError, match=MASK_PASS_ENV):
        mask_pass_form("cpu", 1, masked=False)
