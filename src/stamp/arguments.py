"""Argument types shared by the `stamp` commands: each checks a value when the command line is parsed,
so a bad one is a one-line usage error (exit 2) before any model loads."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

REFINE_METAVAR = "auto|none|guided|sam[:PATH]|sam-authors[:PATH]"


class HelpFormatter(argparse.HelpFormatter):
    """The commands' help: descriptions wrapped to the terminal, the examples (an epilog starting
    "examples:") kept as written, one command per line."""

    def _fill_text(self, text, width, indent):
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


SAM_PATH_ENV = "STAMP_SAM_PATH"


def int_pair(text: str) -> tuple[int, int]:
    """'1024,1280' -> (1024, 1280), with 0 < MIN <= MAX."""
    try:
        lo, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX (two integers), got {text!r}") from None
    if not 0 < lo <= hi:
        raise argparse.ArgumentTypeError(f"need 0 < MIN <= MAX, got {text!r}")
    return lo, hi


def probability(text: str) -> float:
    """A number strictly between 0 and 1 (a foreground probability threshold)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie in (0, 1), got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """An integer >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def refine_spec(text: str) -> str:
    """A refinement spec (`stamp.refine.build_refiner`), its form checked (the SAM path exists:
    `check_refine_source`, when the command runs); returned with the SAM path made explicit."""
    name, sep, arg = text.strip().partition(":")
    name = name.lower()
    if name in ("auto", "none", "guided") and not sep:
        return name
    if name in ("sam", "sam-authors"):
        path = arg if sep else os.environ.get(SAM_PATH_ENV, "")
        if not path:
            raise argparse.ArgumentTypeError(
                f"{name!r} needs a SAM folder or checkpoint file: {name}:PATH (or set {SAM_PATH_ENV})"
            )
        return f"{name}:{path}"
    raise argparse.ArgumentTypeError(f"unknown refinement {text!r}; use {REFINE_METAVAR}")


def check_refine_source(spec: str | None) -> None:
    """FileNotFoundError unless the SAM folder or checkpoint a `sam:PATH` / `sam-authors:PATH` spec names
    exists. The commands call it before loading the model."""
    name, sep, path = str(spec or "").partition(":")
    if name in ("sam", "sam-authors") and sep and not Path(path).exists():
        raise FileNotFoundError(f"SAM folder or checkpoint not found: {path} (--refine {spec})")
