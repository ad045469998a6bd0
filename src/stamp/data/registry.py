"""Open any supported data set by kind: the one place `stamp eval` and `stamp train` resolve `KIND:PATH`.

Kinds and what PATH is:
    refcoco, refcoco+, refcocog, refclef   the LISA-layout root holding `<kind>/` and `images/`
    grefcoco                               the same root, holding `grefcoco/`
    reasonseg                              the ReasonSeg root holding `train/ val/ test/`
    llava                                  a LLaVA-format JSON file (images relative to --image-root,
                                           default: the JSON's folder)
    synthref                               no path (generated; the split picks SynthRef's split);
                                           `synthref:PATH` is an error
"""

from __future__ import annotations

from pathlib import Path

from stamp.data.errors import DataError

REFER_KINDS = ("refcoco", "refcoco+", "refcocog", "refclef")
KINDS = (*REFER_KINDS, "grefcoco", "reasonseg", "llava", "synthref")


def parse_data_spec(spec: str) -> tuple[str, str | None]:
    """ "KIND:PATH" (or "synthref") -> (kind, path)."""
    kind, _, path = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in KINDS:
        import difflib

        close = difflib.get_close_matches(kind, KINDS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise DataError(f"unknown data kind {kind!r}{hint}; use one of {', '.join(KINDS)}")
    if kind == "synthref" and path:
        raise DataError(
            f"synthref is generated and takes no path (got synthref:{path}); for an exported copy use "
            f"refcoco:{path} (--format refer) or grefcoco:{path} (--format grefer)"
        )
    if kind != "synthref" and not path:
        raise DataError(f"data kind {kind} needs a path: {kind}:PATH")
    return kind, path or None


def open_dataset(
    kind: str,
    path: str | Path | None,
    split: str,
    *,
    image_root: str | Path | None = None,
    seed: int = 0,
    length: int | None = None,
    image_size_range: tuple[int, int] | None = None,
    task_weights: dict[str, float] | None = None,
):
    """A map-style data set of StampSamples (see the module docstring for PATH)."""
    if kind == "synthref":
        from stamp.data.synthref import SynthRef

        extra = {"image_size_range": tuple(image_size_range)} if image_size_range else {}
        if task_weights:
            extra["task_weights"] = dict(task_weights)
        return SynthRef(split, seed=seed, length=length, **extra)
    if path is None:
        raise DataError(f"data kind {kind} needs a path")
    if kind in REFER_KINDS:
        from stamp.data.refer import load_refer

        return load_refer(path, kind, split, image_root=image_root)
    if kind == "grefcoco":
        from stamp.data.grefer import load_grefer

        return load_grefer(path, split, image_root=image_root)
    if kind == "reasonseg":
        from stamp.data.reasonseg import load_reasonseg

        return load_reasonseg(path, split)
    if kind == "llava":
        return _open_llava(Path(path), image_root)
    raise DataError(f"unknown data kind {kind!r}; use one of {', '.join(KINDS)}")


def _open_llava(path: Path, image_root):
    from stamp.data.llava import load_llava

    return load_llava(path, image_root or path.parent)
