"""Evaluation protocols: how a referring-segmentation benchmark is asked and scored.

    stamp eval --data refcoco:/data/lisa --split val --model DIR                      # "stamp"
    stamp eval --data refcoco:/data/lisa --split val --model DIR --protocol authors   # the paper's

Both score the same metrics (cIoU, gIoU, ...) on the same expressions; they differ in how the model is
asked and how its cell logits become a mask:

    protocol   question                                   answer    cells        cell -> pixel
    stamp      the data set's canonical question          64 tok    checkpoint's bilinear prob., model thr.
    authors    one of their six templates, seeded per     1024 tok  1024..1024   logit > 0, then nearest
               expression ("Please segment only the
               {} in the image." ...)

"authors" is what the STAMP authors' evaluation script does (their public repository); the template is
drawn per expression from a generator seeded by (seed, dataset index), so a run is reproducible and
independent of sharding, where theirs is unseeded. Their SAM refinement is `--refine sam-authors:PATH`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from stamp.data.sample import StampSample, Turn

AUTHORS_QUESTIONS = (
    "Please segment only the {} in the image.",
    "Can you segment the {} in the image?",
    "Where is the {} in this picture? Please respond with segmentation mask.",
    "Where is '{}' in this image? Please output segmentation mask.",
    "Could you provide the segmentation mask for '{}' in this image?",
    "Please segment the image and highlight '{}'.",
)
"""The question templates of the authors' training data, from which their evaluation draws one."""


@dataclass(frozen=True)
class Protocol:
    """How to ask and score. None fields leave the job's / model's own setting in force."""

    name: str
    max_new_tokens: int
    cells: tuple[int, int] | None = None
    """Image size in 28x28 cells (min, max)."""
    upsample: str = "prob"
    """`StampPredictor` upsample mode."""
    threshold: float | None = None
    """Foreground probability threshold; None: the model's calibrated one."""
    templates: tuple[str, ...] | None = None
    """Question templates drawn per expression; None keeps the data set's own question."""

    def question(self, sample: StampSample, index: int, seed: int) -> StampSample:
        """`sample` asked this protocol's way (a copy; the data set's own question when no templates)."""
        if self.templates is None:
            return sample
        expression = sample.meta.get("expression")
        if not expression:
            raise ValueError(
                f"protocol {self.name!r} asks about a referring expression; sample {sample.id} has none "
                "(use refcoco, refcoco+, refcocog or grefcoco data)"
            )
        rng = np.random.default_rng([seed, index])
        text = self.templates[int(rng.integers(len(self.templates)))].format(expression)
        turns = [Turn("user", text), *sample.turns[1:]]
        return dataclasses.replace(sample, turns=turns)


PROTOCOLS = {
    "stamp": Protocol("stamp", max_new_tokens=64),
    "authors": Protocol(
        "authors",
        max_new_tokens=1024,
        cells=(1024, 1024),
        upsample="nearest",
        threshold=0.5,
        templates=AUTHORS_QUESTIONS,
    ),
}


def get_protocol(name: str) -> Protocol:
    """The protocol called `name`; ValueError naming the valid ones."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; use one of {sorted(PROTOCOLS)}")
    return PROTOCOLS[name]


__all__ = ["AUTHORS_QUESTIONS", "PROTOCOLS", "Protocol", "get_protocol"]
