"""The Text4Seg-style next-token baseline (`mask_decoder: next_token`): training examples and decoding."""

import numpy as np
import pytest
import torch
from helpers import random_image

from stamp.data.sample import Turn
from stamp.inference import StampPredictor
from stamp.model.config import StampSettings
from stamp.processing import load_pretrained
from stamp.tiny import build_tiny_model
from stamp.train.data import as_label_sequence


@pytest.fixture(scope="module")
def baseline():
    return build_tiny_model(seed=3, mask_decoder="next_token")


def _uncached_scores(model, image, prompt: str, answer_ids: list[int], seg_at: int, n: int) -> torch.Tensor:
    """logit(fg) - logit(bg) at the `<|seg|>` and the first n - 1 labels, by ONE causal forward."""
    proc = model.processor
    enc = proc.encode_image(image)
    ids, _ = proc.encode_turns([Turn("user", prompt)], enc, add_generation_prompt=True)
    start = len(ids)
    ids = torch.tensor([ids + answer_ids])
    attn = torch.ones_like(ids)
    mm = (ids == model.config.image_token_id).long()
    with torch.no_grad():
        feats = model.encode_images(enc.pixel_values, enc.grid_thw[None])
        embeds = model.embed_conversation(ids, feats)
        pos = model.conversation_positions(ids, attn, mm, enc.grid_thw[None])
        length = ids.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool).tril()[None, None]
        hidden, _ = model.run_language_model(embeds, pos, causal)
        logits = model.lm_head(hidden[0])
    bg, fg = model.stamp.label_token_ids
    rows = slice(start + seg_at, start + seg_at + n)
    return (logits[rows, fg] - logits[rows, bg]).float()


def test_labels_decoded_with_cache_equal_one_causal_forward(baseline):
    image = random_image(200, 260, 5)
    pred = StampPredictor(baseline)
    pred.set_image(image)
    res = pred.chat("Segment the box.", answer_prefix="It is <|seg|>", max_new_tokens=3)
    assert len(res.masks) == 1
    got = res.masks[0].patch_logits
    gh, gw = got.shape
    bg, fg = baseline.stamp.label_token_ids
    prefix = baseline.processor._text_ids("It is <|seg|>")
    seg_at = prefix.index(baseline.stamp.seg_token_id)
    labels = [fg if v > 0 else bg for v in got.flatten().tolist()]
    ref = _uncached_scores(baseline, image, "Segment the box.", prefix + labels, seg_at, gh * gw)
    assert np.abs(got.flatten() - ref.numpy()).max() <= 1e-4
    # the labels are the mask, not answer text
    assert all(t not in (bg, fg) for t in res.token_ids[: len(prefix)])


def test_batched_rows_of_different_sizes_equal_single(baseline):
    items = [
        (random_image(120, 140, 1), "Segment the thing."),
        (random_image(300, 200, 2), "Longer prompt: it."),
    ]
    pred = StampPredictor(baseline)
    batch = pred.predict_batch(items, answer_prefix="<|seg|>", max_new_tokens=3)
    sizes = {r.masks[0].patch_logits.size for r in batch}
    assert len(sizes) == 2  # different N per row: one row pads while the other decodes labels
    for (image, prompt), res in zip(items, batch):
        pred.set_image(image)
        single = pred.chat(prompt, answer_prefix="<|seg|>", max_new_tokens=3)
        assert single.text == res.text
        assert np.abs(single.masks[0].patch_logits - res.masks[0].patch_logits).max() <= 1e-4


def test_label_sequence_example():
    seg, bg, fg = 7, 1, 2
    example = {
        "input_ids": [5, 6, seg, 9],
        "labels": [-100, 6, seg, 9],
        "targets": [torch.tensor([[0.9, 0.1], [0.5, 0.0]])],
        "weights": [torch.tensor([[1.0, 1.0], [1.0, 0.0]])],
        "image": None,
    }
    out = as_label_sequence(example, seg, [bg, fg])
    assert out["input_ids"] == [5, 6, seg, fg, bg, fg, bg, 9]
    assert out["labels"] == [-100, 6, seg, fg, bg, fg, -100, 9]  # ignored cell: no loss
    assert out["targets"] == [] and out["weights"] == []
    hist = dict(example, labels=[-100, -100, -100, 9])  # a <|seg|> without loss: labels without loss
    assert as_label_sequence(hist, seg, [bg, fg])["labels"][3:7] == [-100] * 4


def test_settings_need_two_label_ids():
    with pytest.raises(ValueError, match="label_token_ids"):
        StampSettings(1, 2, mask_decoder="next_token")
    with pytest.raises(ValueError, match="mask_decoder"):
        StampSettings(1, 2, mask_decoder="beam")
    assert StampSettings(1, 2, mask_decoder="next_token", label_token_ids=[3, 4]).label_token_ids == [3, 4]


def test_save_load_keeps_the_decoder(baseline, tmp_path):
    baseline.save_stamp(tmp_path / "m")
    again = load_pretrained(tmp_path / "m")
    assert again.stamp.mask_decoder == "next_token"
    assert again.stamp.label_token_ids == baseline.stamp.label_token_ids
