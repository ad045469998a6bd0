"""Every answer says why it ended (eos, length, repetition), per row of a batch; a degenerate loop is
stopped by default and runs on when repetition stopping is off."""

import pytest
import torch
from helpers import random_image

from stamp.inference import ChatRequest, StampPredictor
from stamp.inference.generation import (
    REPEAT_MAX_PERIOD,
    REPEAT_MIN_TOKENS,
    GenerationConfig,
    generate,
    repeating_period,
)


def test_repeating_period_rule():
    blue = [11, 12, 13, 14, 15]  # " blue" in a byte-level tokenizer
    assert repeating_period([7] * (REPEAT_MIN_TOKENS - 1)) == 0
    assert repeating_period([7] * REPEAT_MIN_TOKENS) == 1
    assert repeating_period([1, 2] + blue * 6) == 0  # 30 tokens of the loop: not yet
    assert repeating_period([1, 2] + blue * 7) == 5
    assert repeating_period(list(range(REPEAT_MAX_PERIOD)) * 4) == REPEAT_MAX_PERIOD
    assert repeating_period(list(range(REPEAT_MAX_PERIOD + 1)) * 10) == 0  # periods above the bound
    assert repeating_period(list(range(40)) * 3 + [0, 1, 2]) == 0  # a repeat that is not at the end
    assert repeating_period([]) == 0


@pytest.mark.parametrize(
    "answer",
    [
        "Sure, it is <|seg|>.",
        "The red circle is <|seg|> and the blue square is <|seg|>.",
        "There are two red shapes: the red circle <|seg|> and the red star <|seg|>.",
        "They are <|seg|>, <|seg|>, <|seg|>, <|seg|>, <|seg|> and <|seg|>.",
        "No, no, no. There is no blue triangle in the image, only a blue blue square.",
        "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28 29 30",
    ],
)
def test_normal_answers_never_trip_the_rule(tiny_model, tiny_processor, answer):
    ids = tiny_processor._text_ids(answer)
    assert all(repeating_period(ids[:k]) == 0 for k in range(len(ids) + 1))


class RowScript(torch.nn.Module):
    """An lm_head that makes row b of the batch say `scripts[b](step)` (a token id) at each step."""

    def __init__(self, head, scripts):
        super().__init__()
        self.head, self.scripts, self.step = head, scripts, 0

    def forward(self, h):
        logits = self.head(h)
        targets = torch.tensor([script(self.step) for script in self.scripts])
        self.step += 1
        return logits.scatter(-1, targets.view(-1, 1), 1e4)


def _scripted(model, scripts):
    real = model.lm_head
    model.lm_head = RowScript(real, scripts)
    return real


def _requests(pred, n):
    out = []
    for b in range(n):
        enc = pred.processor.encode_image(random_image(100 + 40 * b, 150, b))
        with torch.no_grad():
            feats = pred.model.encode_images(enc.pixel_values, enc.grid_thw[None])[0]
        out.append(pred._request(enc, feats, "Segment it." + " Please." * b, None, None))
    return out


def test_batched_rows_keep_their_own_finish_reasons(tiny_model, tiny_processor):
    """Row 0 ends its turn, row 1 loops on `x <|seg|>` (each `<|seg|>` still gets its mask), row 2
    never repeats and runs out of tokens; each row equals the same request alone."""
    pred = StampPredictor(tiny_model, tiny_processor)
    seg, end = tiny_model.stamp.seg_token_id, pred.processor.im_end_id
    x = pred.processor._text_ids("x")[0]
    scripts = [
        lambda s: end if s == 3 else 40 + s,
        lambda s: (x, seg)[s % 2],
        lambda s: 40 + s,
    ]
    reqs = _requests(pred, 3)
    cfg = GenerationConfig(max_new_tokens=40)
    real = _scripted(tiny_model, scripts)
    try:
        batch = generate(tiny_model, reqs, cfg, pred.pad_id, pred.eos_ids)
        alone = []
        for b in range(3):
            tiny_model.lm_head = RowScript(real, [scripts[b]])
            alone.append(generate(tiny_model, [reqs[b]], cfg, pred.pad_id, pred.eos_ids)[0])
    finally:
        tiny_model.lm_head = real
    assert [o.finish_reason for o in batch] == ["eos", "repetition", "length"]
    assert len(batch[0].token_ids) == 3 and len(batch[2].token_ids) == 40
    loop = batch[1].token_ids
    assert len(loop) == REPEAT_MIN_TOKENS and len(batch[1].mask_logits) == loop.count(seg) == 16
    for got, want in zip(batch, alone):
        assert got.token_ids == want.token_ids and got.finish_reason == want.finish_reason
        assert len(got.mask_logits) == len(want.mask_logits)
        for a, b in zip(got.mask_logits, want.mask_logits):
            assert (a - b).abs().max() <= 1e-5


def test_predictor_results_carry_the_reason_and_the_switch(tiny_model, tiny_processor):
    pred = StampPredictor(tiny_model, tiny_processor)
    pred.set_image(random_image(120, 120, 9))
    x, end = pred.processor._text_ids("x")[0], pred.processor.im_end_id
    real = _scripted(tiny_model, [lambda s: x])
    try:
        stopped = pred.chat("Talk.", max_new_tokens=100)
        tiny_model.lm_head.step = 0
        cut = pred.chat("Talk.", max_new_tokens=10)
        free = StampPredictor(tiny_model, tiny_processor, repetition_stop=False)
        free.set_image(random_image(120, 120, 9))
        tiny_model.lm_head.step = 0
        ran_on = free.chat("Talk.", max_new_tokens=100)
        tiny_model.lm_head.step = 0
        per_request = pred.chat_batch(
            [ChatRequest(random_image(120, 120, 9), "Talk.", max_new_tokens=100, repetition_stop=False)]
        )[0]
        tiny_model.lm_head = RowScript(real, [lambda s: end if s == 2 else x])
        ended = pred.chat("Talk.", max_new_tokens=100)
    finally:
        tiny_model.lm_head = real
    assert stopped.finish_reason == "repetition" and len(stopped.token_ids) == REPEAT_MIN_TOKENS
    assert cut.finish_reason == "length" and len(cut.token_ids) == 10
    assert ran_on.finish_reason == "length" and len(ran_on.token_ids) == 100
    assert per_request.finish_reason == "length" and len(per_request.token_ids) == 100
    assert ended.finish_reason == "eos" and ended.text == "xx"


def test_a_forced_prefix_is_not_a_loop(tiny_model, tiny_processor):
    """Repetition is judged on the free tokens: a repetitive forced prefix with no budget is "length"."""
    pred = StampPredictor(tiny_model, tiny_processor)
    pred.set_image(random_image(100, 100, 1))
    res = pred.chat("Hi", answer_prefix="a" * 40, max_new_tokens=0)
    assert res.finish_reason == "length" and res.text == "a" * 40


def test_a_forced_prefix_does_not_count_towards_a_loop(tiny_model, tiny_processor):
    """A repetitive forced prefix and one free token: the loop rule sees one token, no loop."""
    pred = StampPredictor(tiny_model, tiny_processor)
    pred.set_image(random_image(100, 100, 1))
    a = pred.processor._text_ids("a")[0]
    real = _scripted(tiny_model, [lambda s: a])
    try:
        res = pred.chat("Hi", answer_prefix="a" * 40, max_new_tokens=1)
    finally:
        tiny_model.lm_head = real
    assert res.finish_reason == "length" and res.text == "a" * 41
