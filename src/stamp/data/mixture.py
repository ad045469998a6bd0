"""A seeded, weighted mixture of several sample sources for training.

    >>> mix = MixtureDataset({"refcoco": refcoco_train, "synthref": SynthRef("train")},
    ...                      weights={"refcoco": 3, "synthref": 1}, seed=0)
    >>> sample = mix[12]            # deterministic: source and index depend only on (seed, 12)
    >>> for sample in mix.stream():  # endless
    ...     break

Sources are anything with `__getitem__(int) -> StampSample`; sized sources are sampled uniformly
(with replacement), endless ones (a SynthRef train split) at a random index.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from stamp.data.sample import StampSample

_ENDLESS_RANGE = 2**62


class MixtureDataset:
    """Draws sample i from source s with probability weights[s] / sum(weights), seeded by (seed, i).

    Args:
        sources: name -> data set (map-style; `len()` may raise TypeError for endless ones).
        weights: name -> relative weight (default: equal); names must match `sources`.
        seed: base seed.
        length: value of `len()` (an epoch size); None makes `len()` raise (use `stream()`).
    """

    def __init__(
        self,
        sources: Mapping[str, Any],
        weights: Mapping[str, float] | None = None,
        seed: int = 0,
        length: int | None = None,
    ) -> None:
        if not sources:
            raise ValueError("MixtureDataset needs at least one source")
        weights = dict(weights) if weights is not None else {name: 1.0 for name in sources}
        if set(weights) != set(sources):
            raise ValueError(f"weights {sorted(weights)} must name exactly the sources {sorted(sources)}")
        if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
            raise ValueError(f"weights must be >= 0 with a positive sum, got {weights}")
        self.names = list(sources)
        self.sources = dict(sources)
        self.sizes = {name: _size(src) for name, src in self.sources.items()}
        empty = [n for n, s in self.sizes.items() if s == 0 and weights[n] > 0]
        if empty:
            raise ValueError(f"source(s) {empty} are empty but have a positive weight")
        probs = np.array([float(weights[n]) for n in self.names])
        self.probs = probs / probs.sum()
        self.seed, self.length = int(seed), length

    def __len__(self) -> int:
        if self.length is None:
            raise TypeError("this MixtureDataset has no length: pass length=... or use stream()")
        return self.length

    def locate(self, index: int) -> tuple[str, int]:
        """(source name, index in that source) of mixture sample `index`."""
        rng = np.random.default_rng([self.seed, int(index)])
        name = self.names[int(rng.choice(len(self.names), p=self.probs))]
        size = self.sizes[name]
        return name, int(rng.integers(size if size is not None else _ENDLESS_RANGE))

    def __getitem__(self, index: int) -> StampSample:
        if index < 0 or (self.length is not None and index >= self.length):
            raise IndexError(f"mixture index {index} out of range (length {self.length})")
        name, inner = self.locate(index)
        sample = self.sources[name][inner]
        sample.meta.setdefault("mixture_source", name)
        return sample

    def __iter__(self) -> Iterator[StampSample]:
        return self.stream() if self.length is None else (self[i] for i in range(self.length))

    def stream(self, start: int = 0, step: int = 1) -> Iterator[StampSample]:
        """Endless samples start, start + step, ... (give each data-loader worker its own `start`)."""
        for i in itertools.count(start, step):
            name, inner = self.locate(i)
            sample = self.sources[name][inner]
            sample.meta.setdefault("mixture_source", name)
            yield sample


def _size(source: Any) -> int | None:
    try:
        return len(source)
    except TypeError:
        return None
