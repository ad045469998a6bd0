"""Which model a command uses: a path given by the user, or the bundled `tiny-synth`."""

from __future__ import annotations

import sys
from pathlib import Path

BUNDLED_DIR = Path(__file__).parent / "assets" / "tiny-synth"


def bundled_model_path() -> Path | None:
    """The bundled trained model's directory, or None if this installation has none."""
    return BUNDLED_DIR if (BUNDLED_DIR / "config.json").is_file() else None


BUNDLED_DEFAULT_REFINE = "guided"  # its patch-level masks gain from image-guided edges (docs/MODEL_CARD.md)


def is_bundled(model) -> bool:
    """Whether `model` (a loaded StampModel) was loaded from the bundled model's folder."""
    source = getattr(model, "name_or_path", "") or ""
    return bool(source) and is_bundled_path(source)


def is_bundled_path(path: str | Path | None) -> bool:
    """Whether `load_model(path)` loads the bundled model: None (when this installation has one) or the
    bundled model's folder."""
    bundled = bundled_model_path()
    if bundled is None:
        return False
    if path is None:
        return True
    try:
        return Path(path).resolve() == bundled.resolve()
    except OSError:
        return False


BUNDLED_NOTE = (
    "the bundled model tiny-synth is small and was trained on synthetic shapes only (SynthRef scenes); "
    "on other images its answers mean little. For real images use real weights: --model DIR"
)
"""What the CLI says on stderr (and `/v1/model` and the web page show) when the bundled model is in use."""


def bundled_notice(model) -> str | None:
    """The one stderr line the commands print when `model` is the bundled one, else None."""
    return f"stamp: note: {BUNDLED_NOTE}" if is_bundled(model) else None


def default_refine(model) -> str:
    """The refinement `auto` means for `model`: guided for the bundled model, none for others. The
    predictor, the CLI and the server all resolve `auto` through here."""
    return BUNDLED_DEFAULT_REFINE if is_bundled(model) else "none"


def resolve_refine(spec: str | None, model) -> str:
    """The refinement spec to use with the loaded `model`: "auto" (or None) -> `default_refine(model)`;
    any other spec is returned as is."""
    return default_refine(model) if spec in (None, "auto") else spec


def load_model(path: str | Path | None = None, *, announce: bool = True, **kwargs):
    """Load `path`, or the bundled model when None. Without a bundled model, a tiny RANDOM model is
    used and a notice says so (its answers and masks are meaningless)."""
    from stamp.processing import load_pretrained

    if path is not None:
        return load_pretrained(path, **kwargs)
    bundled = bundled_model_path()
    if bundled is not None:
        kwargs["dtype"] = kwargs.get("dtype") or "float32"  # shipped in bf16 to halve its size
        return load_pretrained(bundled, **kwargs)
    if announce:
        print(
            "stamp: no bundled trained model in this installation; using a tiny RANDOM model "
            "(outputs are meaningless). Pass --model DIR for real weights.",
            file=sys.stderr,
        )
    from stamp.tiny import build_tiny_model

    return build_tiny_model(seed=0)


def export_bundled(model_dir: str | Path, out_dir: str | Path = BUNDLED_DIR, overwrite: bool = False) -> Path:
    """Write a trained checkpoint's model as the bundled model: bf16 weights (half the size), config,
    tokenizer and processor settings (`stamp export`)."""
    import torch

    from stamp.processing import load_pretrained

    model = load_pretrained(model_dir).to(torch.bfloat16)
    model.save_stamp(out_dir, overwrite=overwrite)
    return Path(out_dir)
