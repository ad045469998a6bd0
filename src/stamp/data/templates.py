"""The conversation wording every loader shares: segmentation questions and `<|seg|>` answers.

All choices go through `pick(rng, options)`: with a numpy Generator the choice is seeded, with
`rng=None` the first (canonical) option is used, which is what evaluation loaders use so that a
benchmark's prompts never change between runs. Answers put `<|seg|>` right after the object is named,
in the authors' style ("Sure, it is <|seg|>."). SynthRef's own wording (expressions, VQA, dialogue) is in
`stamp.data.synthref.templates`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stamp.data.sample import SEG_TOKEN

Rng = np.random.Generator | None
SEG = SEG_TOKEN

# ---- conversation templates shared with the real-data loaders ------------------------------------------
REFER_QUESTIONS = (
    "What is {expr} in this image? Please output segmentation mask.",
    "Can you segment {expr} in this image?",
    "Please segment {expr} in this image.",
    "What is {expr} in this image? Please respond with segmentation mask.",
    "Where is {expr}? Please output the segmentation mask.",
    "Segment {expr}.",
)
PLURAL_REFER_QUESTIONS = (
    "What are {expr} in this image? Please output segmentation mask.",
    "Can you segment {expr} in this image?",
    "Please segment {expr} in this image.",
    "Segment {expr}.",
)
SENTENCE_SUFFIXES = (
    "Please output segmentation mask.",
    "Please respond with segmentation mask.",
    "Please output the segmentation mask.",
)
SEG_ANSWERS = (
    "Sure, it is {seg}.",
    "It is {seg}.",
    "Sure, {seg}.",
    "Sure, the segmentation result is {seg}.",
)
NAMED_SEG_ANSWERS = ("{Name} is {seg}.", "Sure, {name} is {seg}.", "It is {name} {seg}.")
PLURAL_SEG_ANSWERS = ("Sure, they are {seg}.", "They are {seg}.", "Sure, here they are {seg}.")
NAMED_PLURAL_SEG_ANSWERS = ("{Name} are {seg}.", "Sure, {name} are {seg}.")
NO_TARGET_SEG_ANSWERS = (
    "There is no {noun} in the image, so the mask is empty: {seg}.",
    "Sorry, I cannot find any {noun} here {seg}.",
    "No {noun} is visible in this image {seg}.",
)
NO_TARGET_TEXT_ANSWERS = (
    "There is no {noun} in the image.",
    "Sorry, I cannot find any {noun} in this image.",
    "No {noun} is visible in this image.",
)
GENERIC_NO_TARGET_NOUN = "such object"


def pick(rng: Rng, options: Sequence[str]) -> str:
    """A seeded choice among `options`; the first one when `rng` is None."""
    return options[0] if rng is None else options[int(rng.integers(len(options)))]


def cap(text: str) -> str:
    """Upper-case the first character only."""
    return text[:1].upper() + text[1:]


# ---- conversation builders ----------------------------------------------------------------------------------
def refer_question(rng: Rng, expr: str, plural: bool = False) -> str:
    """A request to segment the object(s) described by the referring expression `expr`."""
    return pick(rng, PLURAL_REFER_QUESTIONS if plural else REFER_QUESTIONS).format(expr=expr)


def sentence_question(rng: Rng, sentence: str) -> str:
    """A long (reasoning) query followed by a request for the mask, as in ReasonSeg."""
    return f"{sentence.strip()} {pick(rng, SENTENCE_SUFFIXES)}"


def seg_answer(rng: Rng, name: str | None = None, plural: bool = False) -> str:
    """'Sure, it is <|seg|>.' and variants; with `name` sometimes 'The red circle is <|seg|>.'."""
    if name is not None and rng is not None and rng.random() < 0.4:
        text = pick(rng, NAMED_PLURAL_SEG_ANSWERS if plural else NAMED_SEG_ANSWERS)
        return text.format(Name=cap(name), name=name, seg=SEG)
    return pick(rng, PLURAL_SEG_ANSWERS if plural else SEG_ANSWERS).format(seg=SEG)


def no_target_answer(rng: Rng, noun: str | None = None, emit_seg: bool = True) -> str:
    """Says in words that nothing matches; with `emit_seg` it still ends on `<|seg|>` (empty mask)."""
    options = NO_TARGET_SEG_ANSWERS if emit_seg else NO_TARGET_TEXT_ANSWERS
    return pick(rng, options).format(noun=noun or GENERIC_NO_TARGET_NOUN, seg=SEG)
