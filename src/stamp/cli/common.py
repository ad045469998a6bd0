"""What several commands do at run time: the errors shown as one line, building the predictor a
command asked for, printing a result, ending a rank of a multi-process run."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from stamp.cli.args import from_args


class OutputPathError(ValueError):
    """An output path (--out, --save-masks) that cannot be written."""


def __getattr__(name: str):
    """`USER_ERRORS`, the exceptions that are the user's to fix (printed as `stamp: error: ...`, exit
    2), built when first asked for: their modules import torch and transformers, which a command's
    parser must not (`stamp --help` and a usage error stay fast)."""
    if name != "USER_ERRORS":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from stamp.data.errors import DataError
    from stamp.imaging import ImageError
    from stamp.model.loading import StampModelError
    from stamp.refine import RefineError
    from stamp.yaml_config import ConfigError

    return (
        ImageError,
        StampModelError,
        DataError,
        ConfigError,
        RefineError,
        FileExistsError,
        FileNotFoundError,
        ValueError,
        ImportError,  # a missing optional dependency (e.g. deepspeed for a ZeRO accelerate config)
    )


def build_predictor(args):
    """The model and predictor of the model/refine arguments (the SAM source checked first)."""
    from stamp.bundled import model_name
    from stamp.inference import StampPredictor
    from stamp.inference.predictor import PredictorOptions, resolve_refine
    from stamp.processing import load_model_and_processor
    from stamp.refine import check_refine_source

    check_refine_source(args.refine)
    model, processor = load_model_and_processor(
        model_name(args.model), dtype=args.dtype, device=args.device, base_model=args.base_model
    )
    announce_bundled(args.model)
    if args.cells is not None:
        processor.set_cell_range(*args.cells)
    options = from_args(PredictorOptions, args, refine=resolve_refine(args.refine, model))
    return StampPredictor(model, processor, options=options)


def announce_bundled(model: str | None) -> None:
    """One line on stderr when `--model` (None: not given) means the bundled model: what it is, and how
    to use real weights."""
    from stamp.bundled import notice

    line = notice(model)
    if line:
        print(line, file=sys.stderr)


def warn_unfinished(what: str, result) -> None:
    """One line on stderr when `result`'s answer did not end by itself (token limit or a loop)."""
    from stamp.outputs.records import finish_warning

    warning = finish_warning(result.finish_reason, len(result.token_ids))
    if warning:
        print(f"stamp: warning: {what}: {warning}", file=sys.stderr)


def print_result(title: str, result) -> None:
    print(f"{title}\n  answer: {result.text}")
    for k, m in enumerate(result.masks):
        print(f"  mask {k}: area {m.area} px, bbox {m.bbox}, score {m.score:.3f}")
    t = result.timings
    print("  timings (ms): " + ", ".join(f"{k} {1000 * v:.1f}" for k, v in t.items()))


def check_out_dir(out: Path, option: str = "--out") -> None:
    """Refuse, before any model loads, an output folder that is a file or cannot be written (a missing
    or read-only parent, /proc/...): the folder is created and a file written in it, then both removed
    again, so a refused or failed command leaves nothing behind."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{option} {out} is a file, not a folder")
    created, folder = [], out
    while not folder.exists() and folder != folder.parent:
        created.append(folder)
        folder = folder.parent
    try:
        for d in reversed(created):
            d.mkdir()
        fd, probe = tempfile.mkstemp(dir=out, prefix=".stamp-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputPathError(f"cannot write {option} {out}: {exc.strerror or exc}") from None
    finally:
        for d in created:
            try:
                d.rmdir()
            except OSError:
                break


def check_out_file(path: Path, option: str = "--out") -> None:
    """Refuse, before any model loads, an output file that is a folder or whose folder cannot be written."""
    if path.is_dir():
        raise FileExistsError(f"{option} {path} is a folder; name a file")
    if path.parent.exists() and not path.parent.is_dir():
        raise OutputPathError(f"cannot write {option} {path}: {path.parent} is a file, not a folder")
    check_out_dir(path.parent, option)


def several_ranks() -> bool:
    """Whether this process is one rank of a multi-process launch (accelerate/torchrun set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def exit_now(code: int = 0) -> None:
    """End the process at once after flushing: no destructors, no gloo teardown. A rank of a
    multi-process run ends so once its work is written: gloo's destructors at interpreter shutdown
    can abort one rank and hang another after all work was done."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
