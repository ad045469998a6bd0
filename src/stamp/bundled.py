"""The model shipped with the package, `tiny-synth`: the commands' default model, and what they say of it.

It is a checkpoint like any other: `StampModel.from_pretrained("tiny-synth")` loads it by name, and its
defaults (fp32 compute, guided refinement, a calibrated threshold) live in its own config.json, so a copy
of its folder behaves exactly as the original. This module only names it for the commands that use it
when no `--model` is given, and holds the note they print about it.
"""

from __future__ import annotations

from pathlib import Path

NAME = "tiny-synth"
"""The shipped model's name: what `--model` defaults to, and what `from_pretrained` accepts."""

NOTE = (
    "the bundled model tiny-synth is small and was trained on synthetic shapes only (SynthRef scenes); "
    "on other images its answers mean little. For real images use real weights: --model DIR"
)
"""What the CLI says on stderr (and `/v1/model` and the web page show) when the bundled model is in use."""


def model_name(model: str | None) -> str:
    """The model a command runs: the one given, else the bundled one."""
    return NAME if model is None else str(model)


def is_bundled(model: str | None) -> bool:
    """Whether a command's `--model` value (None: not given) means the bundled model."""
    return model is None or str(model) == NAME


def notice(model: str | None) -> str | None:
    """The one stderr line the commands print when `--model` means the bundled model, else None."""
    return f"stamp: note: {NOTE}" if is_bundled(model) else None


def display_name(model: str | None) -> str:
    """What clients are shown for a command's model: a name, never a path on the serving machine
    (a folder's own name)."""
    if is_bundled(model):
        return NAME
    return Path(str(model)).name or str(model)


def export(model_dir: str | Path, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write a trained checkpoint's model in the bundled model's form (`stamp export`): bf16 weights
    (half the size) that load in fp32 (`StampSettings.default_dtype`), config, tokenizer and processor
    settings."""
    import torch

    from stamp.processing import load_model_and_processor

    model, processor = load_model_and_processor(model_dir, dtype="float32")
    model.to(torch.bfloat16).stamp.default_dtype = "float32"
    model.save_stamp(out_dir, processor, overwrite=overwrite)
    return Path(out_dir)
