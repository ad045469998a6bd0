"""The weighted training mixture."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from stamp.data import MixtureDataset, StampSample, Turn
from stamp.data.synthref import SynthRef


class _Tiny:
    """A sized source of trivial samples."""

    def __init__(self, name: str, n: int) -> None:
        self.name, self.n = name, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> StampSample:
        return StampSample(
            f"{self.name}/{i}", np.zeros((4, 4, 3), np.uint8), [Turn("user", "hi"), Turn("assistant", "ok")]
        )


def test_mixture_is_seeded_and_weighted() -> None:
    mix = MixtureDataset(
        {"a": _Tiny("a", 5), "b": _Tiny("b", 3)}, weights={"a": 3, "b": 1}, seed=0, length=400
    )
    ids = [mix[i].id for i in range(400)]
    again = MixtureDataset({"a": _Tiny("a", 5), "b": _Tiny("b", 3)}, weights={"a": 3, "b": 1}, seed=0)
    assert ids == [again[i].id for i in range(400)]
    counts = collections.Counter(i.split("/")[0] for i in ids)
    assert 0.65 < counts["a"] / 400 < 0.85
    assert {int(i.split("/")[1]) for i in ids if i.startswith("b")} == {0, 1, 2}
    stream = again.stream(start=5, step=2)
    assert [next(stream).id for _ in range(3)] == [ids[5], ids[7], ids[9]]
    assert mix[0].meta["mixture_source"] == ids[0].split("/")[0]
    with pytest.raises(IndexError):
        mix[400]
    with pytest.raises(TypeError):
        len(again)


def test_mixture_with_an_endless_source_and_zero_weight() -> None:
    mix = MixtureDataset(
        {"synth": SynthRef("train", seed=0), "b": _Tiny("b", 2)}, weights={"synth": 1, "b": 0}
    )
    sample = mix[3]
    assert sample.id.startswith("synthref/train/") and sample.meta["mixture_source"] == "synth"


def test_mixture_argument_errors() -> None:
    with pytest.raises(ValueError, match="exactly the sources"):
        MixtureDataset({"a": _Tiny("a", 1)}, weights={"b": 1})
    with pytest.raises(ValueError, match="empty"):
        MixtureDataset({"a": _Tiny("a", 0)})
