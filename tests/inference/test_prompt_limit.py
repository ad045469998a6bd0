"""One bound on a request's text tokens, in the predictor (the CLI, the server and the Python API share
it): over it a request is refused with a one-line ValueError before the vision tower or the language
model runs."""

import pytest
from helpers import random_image

from stamp.inference import ChatRequest, StampPredictor
from stamp.inference.predictor import DEFAULT_MAX_PROMPT_TOKENS, PromptTooLongError


@pytest.fixture
def model_calls(tiny_model):
    """Counts of the vision tower's and the language model's forwards."""
    calls = {"vision": 0, "language": 0}
    hooks = [
        tiny_model.model.visual.register_forward_hook(
            lambda *a: calls.__setitem__("vision", calls["vision"] + 1)
        ),
        tiny_model.model.language_model.register_forward_hook(
            lambda *a: calls.__setitem__("language", calls["language"] + 1)
        ),
    ]
    yield calls
    for h in hooks:
        h.remove()


def test_long_prompt_is_refused_before_any_model_work(tiny_model, tiny_processor, model_calls):
    pred = StampPredictor(tiny_model, tiny_processor)
    assert pred.max_prompt_tokens == DEFAULT_MAX_PROMPT_TOKENS == 8192
    words = "Please segment the small red circle near the left edge. " * 1200  # ~67,000 characters
    image = random_image(80, 80, 2)
    with pytest.raises(PromptTooLongError) as info:
        pred.chat_batch([ChatRequest(image, "Hi."), ChatRequest(image, words)])
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "\n" not in message and "8192" in message and "tokens" in message
    with pytest.raises(PromptTooLongError):
        pred.predict_batch([(image, words)])
    assert model_calls == {"vision": 0, "language": 0}  # refused before the vision tower ran
    pred.set_image(image)
    model_calls["vision"] = 0
    with pytest.raises(PromptTooLongError):
        pred.chat(words)
    assert model_calls == {"vision": 0, "language": 0}


def test_the_bound_counts_history_and_prefix_and_is_configurable(tiny_model, tiny_processor):
    pred = StampPredictor(tiny_model, tiny_processor, max_prompt_tokens=60)
    prompt = "Segment it."
    base = pred.prompt_tokens(prompt)
    history = [("user", "What is this?"), ("assistant", "A scene with shapes.")]
    assert pred.prompt_tokens(prompt, history) > base
    assert pred.prompt_tokens(prompt, None, "Sure, it is <|seg|>") > base
    pred.set_image(random_image(64, 64, 1))
    pred.chat(prompt, max_new_tokens=1)  # within the bound
    long_history = history * 3
    assert pred.prompt_tokens(prompt, long_history) > 60
    with pytest.raises(PromptTooLongError, match="the limit is 60 tokens"):
        pred.chat(prompt, long_history, max_new_tokens=1)
    unbounded = StampPredictor(tiny_model, tiny_processor, max_prompt_tokens=None)
    unbounded.set_image(random_image(64, 64, 1))
    assert unbounded.chat(prompt, long_history, max_new_tokens=1).finish_reason in ("eos", "length")
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        StampPredictor(tiny_model, tiny_processor, max_prompt_tokens=0)


def test_the_servers_character_limit_fits_in_the_token_bound(tiny_model, tiny_processor):
    """Any prompt the server's character pre-check lets through (2000 characters, even 4-byte ones a
    byte-level tokenizer splits into 4 tokens each) fits in the default token bound on its own; only a
    long history can exceed it, which the token check then refuses."""
    from stamp.serve.settings import ServeSettings

    pred = StampPredictor(tiny_model, tiny_processor)
    worst = "\U0001f600" * ServeSettings().max_prompt_chars
    assert pred.check_prompt(worst) <= DEFAULT_MAX_PROMPT_TOKENS
    history = [("user", worst), ("assistant", "ok")]
    with pytest.raises(PromptTooLongError):
        pred.check_prompt(worst, history)
