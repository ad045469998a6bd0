"""One signature for the command line, the Python API and the server: the options generated from
`PredictorOptions`, `GenerationConfig` and `ServeSettings` keep their dataclass defaults, `stamp serve`
offers every server setting, and the predictor's keywords and entry points agree."""

import argparse
import dataclasses

import pytest
from helpers import random_image

from stamp.cli import build_parser
from stamp.cli import serve as serve_cli
from stamp.cli.args import Flag, add_dataclass_args, from_args
from stamp.inference import ChatRequest, GenerationConfig, StampPredictor
from stamp.inference.predictor import PredictorOptions
from stamp.serve.settings import ServeSettings

MINIMAL = {  # the least each command needs to parse
    "demo": [],
    "segment": ["a.png", "--prompt", "x", "--out", "o"],
    "chat": ["a.png"],
    "eval": ["--data", "synthref"],
    "calibrate": ["--data", "synthref"],
    "serve": [],
    "web": [],
}
OWN_DEFAULTS = {  # a command's deliberate default of a generated option, and why
    ("calibrate", "GenerationConfig.max_new_tokens"),  # 64: SynthRef answers are short
    ("eval", "GenerationConfig.max_new_tokens"),  # None: the protocol's budget
}


def _commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found.update(action.choices)
    return found


def test_generated_options_keep_their_dataclass_defaults():
    own, checked = set(), 0
    for name, sub in _commands().items():
        generated = [a for a in sub._actions if hasattr(a, "dataclass_field")]
        if not generated:
            continue
        assert name in MINIMAL, f"add `stamp {name}`'s required arguments to MINIMAL"
        args = sub.parse_args(MINIMAL[name])
        for action in generated:
            if action.own_default:
                own.add((name, action.dataclass_field))
                continue
            want = action.dataclass_default
            if action.dest.startswith("no_") and want is True:  # --no-NAME: off unless given
                want = False
            assert getattr(args, action.dest) == want, f"stamp {name} {action.option_strings[0]}"
            checked += 1
    assert checked > 20 and own == OWN_DEFAULTS


def test_serve_help_lists_every_setting_meant_for_the_command_line():
    excluded = {"web", "model_name"}
    assert set(serve_cli.NOT_OPTIONS) == excluded
    options = {f.name: "--" + f.name.replace("_", "-") for f in dataclasses.fields(ServeSettings)}
    options["default_max_new_tokens"] = "--max-new-tokens"
    for command in ("serve", "web"):
        text = _commands()[command].format_help()
        for name, option in options.items():
            assert (option in text) == (name not in excluded), f"stamp {command} {option}"
        assert "(default 8)" in text and "(default 25000000)" in text  # defaults shown


def test_serve_options_make_the_settings():
    values = {
        "max_batch_size": 3,
        "batch_wait_ms": 2.5,
        "timeout_s": 7.0,
        "max_upload_mb": 1.5,
        "max_prompt_chars": 99,
        "max_history_turns": 2,
        "default_max_new_tokens": 5,
        "max_new_tokens_limit": 50,
        "max_queue": 4,
    }
    argv = ["web", "--model", "m"]
    for name, value in values.items():
        option = "--max-new-tokens" if name == "default_max_new_tokens" else "--" + name.replace("_", "-")
        argv += [option, str(value)]
    settings = serve_cli.settings_from_args(build_parser().parse_args(argv), web=True)
    assert settings == ServeSettings(**values, web=True, model_name="m")
    assert serve_cli.settings_from_args(build_parser().parse_args(["serve"]), web=False) == ServeSettings(
        model_name="tiny-synth"
    )


def test_predictor_options_from_the_command_line():
    args = build_parser().parse_args(
        ["demo", "--threshold", "0.3", "--refine", "none", "--no-repetition-stop"]
    )
    assert from_args(PredictorOptions, args) == PredictorOptions(
        threshold=0.3, refine="none", repetition_stop=False
    )
    assert from_args(PredictorOptions, build_parser().parse_args(["demo"])) == PredictorOptions()
    for bad in (["--threshold", "1.5"], ["--refine", "bogus"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["demo", *bad])


def test_the_generator_refuses_what_it_cannot_parse():
    @dataclasses.dataclass
    class Odd:
        pair: tuple[int, int] = (1, 2)
        """Two numbers."""
        on: bool = True
        """Stay on."""

    p = argparse.ArgumentParser()
    with pytest.raises(TypeError, match="Flag"):
        add_dataclass_args(p, Odd)
    with pytest.raises(TypeError, match="no field"):
        add_dataclass_args(p, Odd, ("nope",))
    add_dataclass_args(p, Odd, pair=Flag(type=lambda t: tuple(map(int, t.split(","))), help="two numbers"))
    assert from_args(Odd, p.parse_args(["--pair", "3,4", "--no-on"])) == Odd((3, 4), False)


def test_predictor_takes_options_or_their_keywords(tiny_model, tiny_processor):
    by_keywords = StampPredictor(
        tiny_model, tiny_processor, threshold=0.4, refine="none", max_prompt_tokens=100
    )
    by_options = StampPredictor(
        tiny_model,
        tiny_processor,
        options=PredictorOptions(threshold=0.4, refine="none", max_prompt_tokens=100),
    )
    for pred in (by_keywords, by_options):
        assert (pred.threshold, pred.refiner, pred.max_prompt_tokens) == (0.4, None, 100)
    layered = StampPredictor(
        tiny_model, tiny_processor, options=PredictorOptions(threshold=0.4), repetition_stop=False
    )
    assert layered.options == PredictorOptions(threshold=0.4, repetition_stop=False)
    with pytest.raises(TypeError):
        StampPredictor(tiny_model, tiny_processor, thresold=0.4)
    with pytest.raises(ValueError):
        StampPredictor(tiny_model, tiny_processor, upsample="cubic")


def test_chat_is_chat_batch_on_the_current_image(tiny_model, tiny_processor):
    pred = StampPredictor(tiny_model, tiny_processor, refine="none")
    image = random_image(64, 80, 3)
    pred.set_image(image)
    one = pred.chat("Segment it.", answer_prefix="<|seg|>", max_new_tokens=3)
    config = GenerationConfig(max_new_tokens=3)
    (batched,) = pred.chat_batch(
        [ChatRequest(image, "Segment it.", answer_prefix="<|seg|>")], generation=config
    )
    (wrapped,) = pred.predict_batch([(image, "Segment it.")], answer_prefix="<|seg|>", generation=config)
    for other in (batched, wrapped):
        assert other.token_ids == one.token_ids and len(other.masks) == len(one.masks) == 1
        assert (other.masks[0].patch_logits == one.masks[0].patch_logits).all()
