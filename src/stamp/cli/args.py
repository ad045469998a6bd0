"""What the `stamp` commands share: the parser class, argument types and the argument groups declared
once (model, refine, output). Every type checks its value when the command line is parsed, so a bad one
is a one-line usage error (exit 2) before any model loads."""

from __future__ import annotations

import argparse
import difflib
import os
import sys

EXIT_USAGE = 2
REFINE_METAVAR = "auto|none|guided|sam[:PATH]|sam-authors[:PATH]"
SAM_PATH_ENV = "STAMP_SAM_PATH"


class HelpFormatter(argparse.HelpFormatter):
    """Descriptions wrapped to the terminal; an epilog starting "examples:" kept as written."""

    def _fill_text(self, text, width, indent):
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class Parser(argparse.ArgumentParser):
    """Usage errors exit 2 with one line; a misspelled option or command names the closest valid one."""

    def error(self, message: str):
        if "unrecognized arguments" in message or "invalid choice" in message:
            words = [w.strip("'\",") for w in message.split()]
            known = [o for a in self._actions for o in a.option_strings]
            known += [c for a in self._actions if isinstance(a.choices, dict) for c in a.choices]
            for w in words:
                close = difflib.get_close_matches(w, known, n=1)
                if close and w not in known:
                    message += f" (did you mean {close[0]}?)"
                    break
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def add_command(sub, name: str, help_text: str, examples: str | None = None, **kwargs) -> Parser:
    """A subcommand parser with the shared formatter and its examples as the epilog."""
    return sub.add_parser(name, help=help_text, epilog=examples, formatter_class=HelpFormatter, **kwargs)


# ---------------------------------------------------------------------------------------------- types
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


def probabilities(text: str) -> list[float]:
    """'0.3,0.4' -> [0.3, 0.4], each in (0, 1)."""
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.3,0.4, got {text!r}") from None
    if not vals or not all(0.0 < v < 1.0 for v in vals):
        raise argparse.ArgumentTypeError(f"thresholds must lie in (0, 1), got {text!r}")
    return vals


def weights(text: str) -> dict[str, float]:
    """'refer=0.5,vqa=0.3' -> {'refer': 0.5, 'vqa': 0.3} (task names are checked by SynthRef)."""
    out: dict[str, float] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        try:
            weight = float(value) if sep else 1.0
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected TASK=WEIGHT,..., got {part!r}") from None
        if not name.strip() or weight < 0:
            raise argparse.ArgumentTypeError(f"expected TASK=WEIGHT with WEIGHT >= 0, got {part!r}")
        out[name.strip()] = weight
    return out


def refine_spec(text: str) -> str:
    """A refinement spec (`stamp.refine.build_refiner`), its form checked; returned with the SAM path
    made explicit (`sam` alone takes it from $STAMP_SAM_PATH). The path itself is checked by
    `stamp.refine.check_refine_source` when the command runs."""
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


# ---------------------------------------------------------------------------------------------- groups
def add_model_args(
    p: argparse.ArgumentParser, *, adapters: bool = True, threshold: bool = True, cells_help: str = ""
) -> None:
    """--model, --dtype, --device, --cells; --base-model (LoRA adapters) and --threshold unless the
    command has no use for them."""
    p.add_argument("--model", default=None, help="model directory (default: the bundled model)")
    if adapters:
        p.add_argument(
            "--base-model", default=None, help="base model directory for a LoRA adapter checkpoint"
        )
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="weights dtype")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0 ... (default cpu)")
    if threshold:
        p.add_argument(
            "--threshold",
            type=probability,
            default=None,
            help="foreground probability threshold in (0, 1) (default: the model's calibrated "
            "mask_threshold, else 0.5)",
        )
    p.add_argument(
        "--cells",
        type=int_pair,
        default=None,
        metavar="MIN,MAX",
        help="image size in 28x28 cells, overriding the checkpoint's processor settings "
        "(e.g. 1024,1024 for the authors' evaluation)" + cells_help,
    )


def add_refine_arg(p: argparse.ArgumentParser) -> None:
    """--refine: how coarse cell masks are refined to pixels."""
    p.add_argument(
        "--refine",
        type=refine_spec,
        default="auto",
        metavar=REFINE_METAVAR,
        help="sub-patch refinement: image-guided upsampling, or SAM from a local transformers SAM folder "
        "or an original checkpoint file (sam_vit_h_4b8939.pth): 'sam' is the project's refiner, "
        "'sam-authors' the authors' evaluation procedure (seeded points) "
        "(default auto: guided for the bundled model, none for others)",
    )


def add_repetition_arg(p: argparse.ArgumentParser) -> None:
    """--no-repetition-stop: let an answer caught in a loop run on (`GenerationConfig.repetition_stop`)."""
    p.add_argument(
        "--no-repetition-stop",
        action="store_true",
        help="let an answer that keeps repeating itself (the same n-gram over and over) run on to the "
        "token limit; by default it is stopped and its finish_reason is 'repetition'",
    )


def add_output_args(p: argparse.ArgumentParser, out_help: str, *, default: str | None = None) -> None:
    """--out (required unless it has a default) and --force (replace what is there)."""
    if default is None:
        p.add_argument("--out", required=True, help=out_help)
    else:
        p.add_argument("--out", default=default, help=f"{out_help} (default {default})")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")


def add_progress_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
