"""What transformers and accelerate print while a model loads or saves -- the `Loading weights` and
`Writing model shards` bars, DeepSpeed's accelerator notice -- shown only when asked: `verbose=True`,
or the `stamp` logger at INFO or below (`logging.getLogger("stamp").setLevel(logging.INFO)`;
`stamp --verbose` does so)."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator

LOGGER = "stamp"


def wanted(verbose: bool | None = None) -> bool:
    """Whether library output is asked for: `verbose` when given, else the `stamp` logger's level."""
    return logging.getLogger(LOGGER).isEnabledFor(logging.INFO) if verbose is None else verbose


@contextlib.contextmanager
def library_output(verbose: bool | None = None) -> Iterator[None]:
    """Within the block: transformers' progress bars on if and only if `wanted(verbose)`, restored
    after; and
    DeepSpeed not imported by accelerate's unwrapping of a model (`save_pretrained` asks whether the
    model is a DeepSpeedEngine, importing DeepSpeed, which prints its accelerator notice). Until
    something imported DeepSpeed -- a DeepSpeed run does -- no model can be a DeepSpeedEngine, so the
    answer is the same."""
    from transformers.utils import logging as hf_logging

    show = wanted(verbose)
    bars = hf_logging.is_progress_bar_enabled()
    if show != bars:
        hf_logging.enable_progress_bar() if show else hf_logging.disable_progress_bar()
    with contextlib.ExitStack() as stack:
        if "deepspeed" not in sys.modules:
            stack.enter_context(_deepspeed_unavailable())
        try:
            yield
        finally:
            if show != bars:
                hf_logging.enable_progress_bar() if bars else hf_logging.disable_progress_bar()


@contextlib.contextmanager
def _deepspeed_unavailable() -> Iterator[None]:
    try:
        import accelerate.utils.other as other
    except ImportError:  # no accelerate: nothing imports DeepSpeed on its behalf
        yield
        return
    before = other.is_deepspeed_available
    other.is_deepspeed_available = lambda: False
    try:
        yield
    finally:
        other.is_deepspeed_available = before
