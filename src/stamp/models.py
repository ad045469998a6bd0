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
    bundled = bundled_model_path()
    if not source or bundled is None:
        return False
    try:
        return Path(source).resolve() == bundled.resolve()
    except OSError:
        return False


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
    from stamp.model.modeling import StampModel

    if path is not None:
        return StampModel.from_pretrained(path, **kwargs)
    bundled = bundled_model_path()
    if bundled is not None:
        kwargs["dtype"] = kwargs.get("dtype") or "float32"  # shipped in bf16 to halve its size
        return StampModel.from_pretrained(bundled, **kwargs)
    if announce:
        print(
            "stamp: no bundled trained model in this installation; using a tiny RANDOM model "
            "(outputs are meaningless). Pass --model DIR for real weights.",
            file=sys.stderr,
        )
    return StampModel.tiny(seed=0)


def export_bundled(model_dir: str | Path, out_dir: str | Path = BUNDLED_DIR, overwrite: bool = False) -> Path:
    """Write a trained checkpoint's model as the bundled model: bf16 weights (half the size), config,
    tokenizer and processor settings. `python -m stamp.models CHECKPOINT/model [--force]`."""
    import torch

    from stamp.model.modeling import StampModel

    model = StampModel.from_pretrained(model_dir).to(torch.bfloat16)
    model.save_stamp(out_dir, overwrite=overwrite)
    return Path(out_dir)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="export a trained model as the bundled tiny-synth model")
    ap.add_argument("model_dir")
    ap.add_argument("--out", default=str(BUNDLED_DIR))
    ap.add_argument("--force", action="store_true")
    a = ap.parse_args()
    print(f"wrote {export_bundled(a.model_dir, a.out, a.force)}")
