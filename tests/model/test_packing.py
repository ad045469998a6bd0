"""Packed training rows give the same losses and mask logits as one sample per row."""

import numpy as np
import torch
from helpers import random_image

from stamp.data.sample import StampSample, Turn
from stamp.model.packing import plan_rows
from stamp.tiny import tiny_processor


def samples():
    """Four samples: one `<|seg|>`, none, two, none; images of different sizes."""
    box = np.zeros((224, 224), np.uint8)
    box[40:120, 30:150] = 1
    return [
        StampSample(
            "a",
            random_image(224, 224, 1),
            [Turn("user", "Segment."), Turn("assistant", "It is <|seg|>.")],
            [box],
        ),
        StampSample(
            "b", random_image(168, 280, 2), [Turn("user", "How many?"), Turn("assistant", "Three.")], []
        ),
        StampSample(
            "c",
            random_image(200, 200, 3),
            [Turn("user", "Both, please, in order."), Turn("assistant", "x <|seg|> y <|seg|>")],
            [box[:200, :200], 1 - box[:200, :200]],
        ),
        StampSample(
            "d", random_image(112, 112, 4), [Turn("user", "Hi"), Turn("assistant", "Hello there.")], []
        ),
    ]


def _batch(model):
    proc = tiny_processor()
    return proc.collate([proc.encode_sample(s) for s in samples()])


def test_plan_rows_first_fit_decreasing():
    assert plan_rows([5, 3, 2, 4], pack=False) == [[0], [1], [2], [3]]
    rows = plan_rows([5, 3, 2, 4], pack=True)
    assert sorted(i for r in rows for i in r) == [0, 1, 2, 3]
    assert all(sum([5, 3, 2, 4][i] for i in r) <= 5 for r in rows) and len(rows) == 3


def test_packed_equals_padded(tiny_model):
    batch = _batch(tiny_model)
    with torch.no_grad():
        padded = tiny_model.stamp_forward(**batch, pack=False)
        packed = tiny_model.stamp_forward(**batch, pack=True)
    assert padded.mask_logits.shape == packed.mask_logits.shape == (3, padded.mask_logits.shape[1])
    torch.testing.assert_close(packed.mask_logits, padded.mask_logits, atol=1e-5, rtol=1e-5)
    for name in ("loss", "text_loss", "bce_loss", "dice_loss"):
        torch.testing.assert_close(getattr(packed, name), getattr(padded, name), atol=1e-5, rtol=1e-5)


def test_packing_actually_shares_rows(tiny_model):
    batch = _batch(tiny_model)
    seen = []
    orig = tiny_model.run_language_model
    tiny_model.run_language_model = lambda e, p, a, c=None: (seen.append(e.shape), orig(e, p, a, c))[1]
    try:
        with torch.no_grad():
            tiny_model.stamp_forward(**batch, pack=True)
            tiny_model.stamp_forward(**batch, pack=False)
    finally:
        tiny_model.run_language_model = orig
    assert seen[0][0] < seen[1][0]  # fewer rows when packed
    assert seen[0][0] * seen[0][1] < seen[1][0] * seen[1][1]  # fewer token slots computed
