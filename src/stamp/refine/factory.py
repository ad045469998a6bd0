"""`build_refiner(spec)`: every refiner from its spec string, and the cheap check of a spec's SAM source.

"none" | "guided" | "sam:PATH" | "sam-authors:PATH"
"""

from __future__ import annotations

from pathlib import Path

import torch

from stamp.refine.base import GuidedRefiner, NoRefiner, RefineError, Refiner
from stamp.refine.sam import SamRefiner
from stamp.refine.sam_authors import SamAuthorsRefiner


def check_refine_source(spec: str | None) -> None:
    """FileNotFoundError unless the SAM folder or checkpoint a `sam:PATH` / `sam-authors:PATH` spec names
    exists: a cheap check commands make before loading the model."""
    name, sep, path = str(spec or "").partition(":")
    if name in ("sam", "sam-authors") and sep and not Path(path).exists():
        raise FileNotFoundError(f"SAM folder or checkpoint not found: {path} (--refine {spec})")


def build_refiner(spec: str, device: str | torch.device = "cpu", threshold: float = 0.5) -> Refiner:
    """A refiner from a spec string: "none" | "guided" | "sam:PATH" | "sam-authors:PATH".

    PATH is a transformers SAM directory or an original segment-anything checkpoint file
    (`sam_vit_h_4b8939.pth`), always given: the weights are the caller's choice. "sam" is the project's refiner (`SamRefiner`), "sam-authors" the authors' evaluation
    procedure (`stamp.refine.sam_authors.SamAuthorsRefiner`, seed 0).

    `threshold` is the foreground probability threshold of the guided refiner (the predictor passes
    its own, so refined and unrefined masks cut the probabilities at the same level).

    Raises:
        RefineError: unknown spec, no SAM path, or a missing/invalid SAM directory or checkpoint.
    """
    name, _, arg = str(spec).strip().partition(":")
    name = name.lower()
    if name == "none" and not arg:
        return NoRefiner()
    if name == "guided" and not arg:
        return GuidedRefiner(threshold=threshold)
    if name in ("sam", "sam-authors"):
        path = arg
        if not path:
            raise RefineError(f"refiner {name!r} needs a SAM directory or checkpoint file: use '{name}:PATH'")
        if name == "sam":
            return SamRefiner(path, device=device)

        return SamAuthorsRefiner(path, device=device)
    raise RefineError(f"unknown refiner {spec!r}; use 'none', 'guided', 'sam:PATH' or 'sam-authors:PATH'")
