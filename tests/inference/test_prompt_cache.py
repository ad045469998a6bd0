"""Questions on one image share their prompt's common prefix (`stamp.inference.generation.PromptCache`):
a follow-up recomputes only its new tokens, and its answer and masks equal those of a predictor that
recomputes the whole prompt."""

import numpy as np
import pytest
from helpers import random_image

from stamp.inference import StampPredictor, generation
from stamp.tiny import build_tiny_model


class _Seen(list):
    lengths: list[int]

    def __init__(self):
        super().__init__()
        self.lengths = []


@pytest.fixture
def reused(monkeypatch) -> _Seen:
    """How many prompt tokens each prompt pass took from the cache (and, in `reused.lengths`, how long
    each prompt was)."""
    seen = _Seen()
    real = generation.prefill

    def spy(*args, **kwargs):
        pre = real(*args, **kwargs)
        seen.append(pre.reused)
        seen.lengths.append(pre.input_ids.shape[1])
        return pre

    monkeypatch.setattr(generation, "prefill", spy)
    return seen


def _ask(pred, prompt, history=None):
    return pred.chat(prompt, history, answer_prefix="It is <|seg|>", max_new_tokens=6, repetition_stop=False)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_follow_up_reuses_the_prefix_and_answers_the_same(attn, reused):
    model, processor = build_tiny_model(seed=5, attn_implementation=attn)
    image = random_image(240, 200, 7)
    pred = StampPredictor(model, processor)
    pred.set_image(image)
    first = _ask(pred, "Segment the box.")
    history = [("user", "Segment the box."), ("assistant", first.text)]
    follow = _ask(pred, "And the other one?", history)
    cells = first.masks[0].patch_logits.size

    fresh = StampPredictor(model, processor)
    fresh.set_image(image)
    want = _ask(fresh, "And the other one?", history)

    assert reused[0] == 0 and reused[1] > cells  # the image and the first turn came from the cache
    assert reused[2] == 0  # the fresh predictor computed everything
    assert follow.token_ids == want.token_ids
    assert np.abs(follow.masks[0].patch_logits - want.masks[0].patch_logits).max() <= 1e-5


def test_same_question_twice_recomputes_one_token(reused, tiny_model, tiny_processor):
    pred = StampPredictor(tiny_model, tiny_processor)
    pred.set_image(random_image(200, 200, 1))
    a = _ask(pred, "Segment it.")
    b = _ask(pred, "Segment it.")
    assert reused == [0, reused.lengths[1] - 1]  # all but the last token
    assert a.token_ids == b.token_ids
    assert np.abs(a.masks[0].patch_logits - b.masks[0].patch_logits).max() <= 1e-5


def test_a_new_image_or_a_batch_starts_afresh(reused, tiny_model, tiny_processor):
    pred = StampPredictor(tiny_model, tiny_processor)
    pred.set_image(random_image(200, 200, 1))
    _ask(pred, "Segment it.")
    pred.set_image(random_image(200, 200, 2))  # same size, so the same tokens: only the features differ
    _ask(pred, "Segment it.")
    pred.predict_batch(
        [(random_image(200, 200, 2), "Segment it.")] * 2, answer_prefix="It is", max_new_tokens=2
    )
    assert reused == [0, 0, 0]
    pred.reset_image()
    with pytest.raises(ValueError, match="no image"):
        _ask(pred, "Segment it.")
