"""The CPU decode step's kernel choice (`stamp.inference.generation.matvec_kernels`): oneDNN is off for
exactly the one-row steps (batch 1, no mask pass), restored afterwards, and a bf16 answer is the same
with and without it."""

import contextlib

import numpy as np
import pytest
import torch
from helpers import random_image

from stamp.inference import StampPredictor, generation
from stamp.tiny import build_tiny_model


def _onednn_during_lm_head(model) -> list[bool]:
    """Whether oneDNN was enabled at each lm_head call (one per prompt pass and per decode step)."""
    seen: list[bool] = []
    model.lm_head.register_forward_hook(lambda *_: seen.append(torch.backends.mkldnn.enabled))
    return seen


def test_one_row_steps_run_without_onednn_and_restore_it():
    model, processor = build_tiny_model(seed=3, dtype=torch.bfloat16)
    seen = _onednn_during_lm_head(model)
    pred = StampPredictor(model, processor)
    pred.set_image(random_image(200, 240))
    res = pred.chat("Segment it.", answer_prefix="It is <|seg|> here", max_new_tokens=3)
    assert len(res.masks) == 1
    # prompt pass (many rows: oneDNN), the mask pass step (1 + N rows: oneDNN), the other steps (one row)
    assert seen[0] is True
    assert seen.count(True) == 2, seen
    assert seen.count(False) == len(seen) - 2 >= 3, seen
    assert torch.backends.mkldnn.enabled


def test_batched_steps_keep_onednn():
    model, processor = build_tiny_model(seed=3, dtype=torch.bfloat16)
    seen = _onednn_during_lm_head(model)
    pred = StampPredictor(model, processor)
    items = [(random_image(200, 240, 1), "Segment it."), (random_image(180, 200, 2), "Where is it?")]
    pred.predict_batch(items, answer_prefix="It is", max_new_tokens=3)
    assert seen and all(seen), seen


def test_flag_restored_after_an_error():
    with pytest.raises(RuntimeError), generation.matvec_kernels(torch.device("cpu"), True):
        assert not torch.backends.mkldnn.enabled
        raise RuntimeError("boom")
    assert torch.backends.mkldnn.enabled


def test_bf16_answer_and_mask_equal_with_onednn_everywhere(monkeypatch):
    model, processor = build_tiny_model(seed=4, dtype=torch.bfloat16)
    pred = StampPredictor(model, processor)
    pred.set_image(random_image(220, 260, 5))
    ask = dict(answer_prefix="Sure, <|seg|> and", max_new_tokens=12, repetition_stop=False)
    fast = pred.chat("Segment the box.", **ask)
    monkeypatch.setattr(generation, "matvec_kernels", lambda *a: contextlib.nullcontext())
    plain = pred.chat("Segment the box.", **ask)
    assert fast.token_ids == plain.token_ids
    assert np.abs(fast.masks[0].patch_logits - plain.masks[0].patch_logits).max() <= 1e-2
