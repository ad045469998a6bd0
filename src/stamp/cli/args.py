"""What the `stamp` commands share: the parser class, argument types, the argument groups declared
once (model, predictor, decoding, output, progress) and the generator that turns a dataclass's fields
into options (`add_dataclass_args`, `from_args`). Every type checks its value when the command line is
parsed, so a bad one is a one-line usage error (exit 2) before any model loads.

Options that configure a library object (`PredictorOptions`, `GenerationConfig`, `ServeSettings`) are
generated from its dataclass: the name, default and help come from the field, so the command line, the
Python API and the server cannot disagree. What only the command line needs (a validating type, a
metavar, another option name) is given here as a `Flag`."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import functools
import inspect
import textwrap
import types
import typing
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

EXIT_USAGE = 2
EXIT_FAULT = 1
"""Exit codes: 2 for what the user must fix (arguments, inputs), 1 for a fault of the machine (a full
disk) or a run that left work undone."""
REFINE_METAVAR = "auto|none|guided|sam:PATH|sam-authors:PATH"


class HelpFormatter(argparse.HelpFormatter):
    """Descriptions wrapped to the terminal; an epilog starting "examples:" kept as written."""

    def _fill_text(self, text, width, indent):
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class Parser(argparse.ArgumentParser):
    """Usage errors exit 2 with one line (`stamp segment: error: ... (see stamp segment --help)`, no
    usage block before it); a misspelled option or command names the closest valid one."""

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
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


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
    """A refinement spec (`stamp.refine.build_refiner`), its form checked: SAM refiners name their
    weights (`sam:PATH`). The path itself is checked by `stamp.refine.check_refine_source` when the
    command runs."""
    name, sep, arg = text.strip().partition(":")
    name = name.lower()
    if name in ("auto", "none", "guided") and not sep:
        return name
    if name in ("sam", "sam-authors"):
        if not arg:
            raise argparse.ArgumentTypeError(f"{name!r} needs a SAM folder or checkpoint file: {name}:PATH")
        return f"{name}:{arg}"
    raise argparse.ArgumentTypeError(f"unknown refinement {text!r}; use {REFINE_METAVAR}")


def history(text: str) -> list:
    """Earlier turns of the conversation: a JSON list of {"role", "text"} turns (the HTTP API's form),
    given inline or as the path of a .json file holding it; checked by the one history rule
    (`stamp.data.sample.parse_history`)."""
    import json

    from stamp.data.sample import HistoryError, parse_history

    source = Path(text)
    try:
        raw = source.read_text() if text.strip().endswith(".json") and source.is_file() else text
        return parse_history(json.loads(raw))
    except (OSError, ValueError) as exc:
        if isinstance(exc, (HistoryError, OSError)):
            raise argparse.ArgumentTypeError(str(exc)) from None
        raise argparse.ArgumentTypeError(
            f"expected a JSON list of {{role, text}} turns (or a .json file), got {text[:60]!r}"
        ) from None


def device(text: str) -> str:
    """A torch device: cpu, cuda, cuda:N or mps. A GPU that this machine does not have is refused here,
    before any model loads; torch is imported only to check one."""
    name, sep, index = text.strip().lower().partition(":")
    if name not in ("cpu", "cuda", "mps") or (sep and (name != "cuda" or not index.isdigit())):
        raise argparse.ArgumentTypeError(f"expected cpu, cuda, cuda:N or mps, got {text!r}")
    if name == "cuda":
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise argparse.ArgumentTypeError(
                f"{text!r}: CUDA is not available on this machine; use --device cpu"
            )
        if sep and int(index) >= count:
            raise argparse.ArgumentTypeError(
                f"{text!r}: this machine has {count} CUDA device(s), cuda:0..{count - 1}"
            )
    if name == "mps":
        import torch

        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(
                f"{text!r}: MPS is not available on this machine; use --device cpu"
            )
    return text.strip().lower()


def device_or_auto(text: str) -> str:
    """`device`, or auto (the command picks: the CPU, then CUDA if present)."""
    return "auto" if text.strip().lower() == "auto" else device(text)


# ---------------------------------------------------------------------------------------------- dataclasses
class _FieldDefault:
    def __repr__(self) -> str:
        return "FIELD_DEFAULT"


FIELD_DEFAULT: Any = _FieldDefault()
"""`Flag.default` when the option's default is the field's own."""


@dataclasses.dataclass(frozen=True)
class Flag:
    """What the command line needs of a dataclass field beyond its name, type, default and help."""

    type: Callable[[str], Any] | None = None
    """Parses and checks the text (default: the field's own type, `int`, `float` or `str`)."""
    metavar: str | None = None
    """The value's name in the help (default: the option's name in capitals)."""
    option: str | None = None
    """The option's name where it is not --field-name (`ServeSettings.default_max_new_tokens` is
    --max-new-tokens)."""
    default: Any = FIELD_DEFAULT
    """A command's own default, where it differs from the dataclass's on purpose (give `help` saying so)."""
    help: str | None = None
    """The help instead of the field's (metadata "help", else its docstring)."""


GENERATED = "_dataclass_fields"
"""The parser default in which `add_dataclass_args` records, per class, the fields it added and their
destinations; `from_args` reads it back."""


def add_dataclass_args(
    p: argparse.ArgumentParser,
    cls: type,
    fields: Iterable[str] | None = None,
    *,
    exclude: Iterable[str] = (),
    title: str | None = None,
    **flags: Flag,
) -> None:
    """One option per field of dataclass `cls` (`fields`, default all, less `exclude`), in field order.

    A field `max_batch_size: int = 8` becomes `--max-batch-size` (type int, default 8) with the field's
    help: its metadata "help" if it has one, else its docstring, ending "(default 8)" unless the help
    already speaks of the default. `X | None` parses as X. A bool defaulting to False becomes a
    `--name` switch; one defaulting to True becomes `--no-name` (destination `no_name`), and its help
    (metadata "help") says what turning it off does. `flags` give what the field cannot: a validating
    type, a metavar, another option name, a command's own default. A field whose type is none of these
    needs a `Flag(type=...)`: TypeError otherwise, when the parser is built."""
    chosen = [f for f in dataclasses.fields(cls) if fields is None or f.name in fields]
    skip = set(exclude)
    unknown = (set(fields or ()) | skip | set(flags)) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {', '.join(sorted(unknown))}")
    target = p.add_argument_group(title) if title else p
    added = []
    for f in chosen:
        if f.name in skip:
            continue
        spec = flags.get(f.name, Flag())
        added.append(_add_field(target, cls, f, spec))
    record = dict(p.get_default(GENERATED) or {})
    key = f"{cls.__module__}.{cls.__qualname__}"
    record[key] = tuple(record.get(key, ())) + tuple(added)
    p.set_defaults(**{GENERATED: record})


def from_args(cls, args: argparse.Namespace, **values: Any):
    """An instance of dataclass `cls` from the options `add_dataclass_args` added for it (a `--no-name`
    switch read back as `name`), with `values` (fields the command sets itself) taking precedence.
    Fields without an option keep the dataclass's defaults; `cls` checks the values (ValueError)."""
    record = (getattr(args, GENERATED, None) or {}).get(f"{cls.__module__}.{cls.__qualname__}", ())
    kwargs = {
        name: (not getattr(args, dest)) if negated else getattr(args, dest) for name, dest, negated in record
    }
    return cls(**{**kwargs, **values})


def field_default(f: dataclasses.Field) -> Any:
    """A dataclass field's default (its factory called); TypeError for a field without one."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    raise TypeError(f"field {f.name} has no default: it cannot be an option")


@functools.cache
def field_docs(cls) -> dict[str, str]:
    """The docstring written under each field of dataclass `cls` (inherited fields included), by name."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):  # no source (e.g. a frozen application): help from metadata only
            continue
        body = tree.body[0].body
        for node, after in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def _add_field(p, cls, f: dataclasses.Field, spec: Flag) -> tuple[str, str, bool]:
    """Add the option of field `f`; (field name, destination, whether the switch is negated)."""
    kind = _option_type(cls, f)
    default = field_default(f) if spec.default is FIELD_DEFAULT else spec.default
    text = spec.help or f.metadata.get("help") or _sentence(field_docs(cls).get(f.name, ""))
    text = text.replace("%", "%%")  # argparse formats help with %
    if kind is None and spec.type is None:
        raise TypeError(f"{cls.__name__}.{f.name}: give Flag(type=...) to parse it from the command line")
    if kind is bool and spec.type is None:
        negated = bool(default)
        dest = f"no_{f.name}" if negated else f.name
        option = spec.option or ("--no-" if negated else "--") + f.name.replace("_", "-")
        action = p.add_argument(option, dest=dest, action="store_true", help=text)
    else:
        name = spec.option or "--" + f.name.replace("_", "-")
        negated, dest = False, f.name
        if "default" not in text.lower() and default is not None:
            text += f" (default {default:g})" if isinstance(default, float) else f" (default {default})"
        action = p.add_argument(
            name,
            dest=dest,
            type=spec.type or kind,
            default=default,
            metavar=spec.metavar or name.lstrip("-").replace("-", "_").upper(),
            help=text,
        )
    action.dataclass_field = f"{cls.__name__}.{f.name}"  # for the test that defaults do not drift
    action.dataclass_default = field_default(f)
    action.own_default = spec.default is not FIELD_DEFAULT
    return f.name, dest, negated


def _option_type(cls, f: dataclasses.Field) -> Callable[[str], Any] | None:
    """The field's type with `| None` dropped, when it is bool, int, float or str; else None."""
    hint = typing.get_type_hints(cls).get(f.name, Any)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = rest[0] if len(rest) == 1 else Any
    return hint if hint in (bool, int, float, str) else None


def _sentence(doc: str) -> str:
    """A field docstring as help text: one line, lower-case start, no final period."""
    text = " ".join(doc.split()).removesuffix(".")
    return text[:1].lower() + text[1:] if text[1:2].islower() else text


# ---------------------------------------------------------------------------------------------- groups
def add_model_args(p: argparse.ArgumentParser, *, adapters: bool = True, cells_help: str = "") -> None:
    """--model, --dtype, --device, --cells; --base-model (LoRA adapters) unless the command has no use
    for it."""
    p.add_argument("--model", default=None, help="model directory (default: the bundled model)")
    if adapters:
        p.add_argument(
            "--base-model", default=None, help="base model directory for a LoRA adapter checkpoint"
        )
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="weights dtype")
    p.add_argument("--device", type=device, default="cpu", help="cpu, cuda, cuda:0 ... (default cpu)")
    p.add_argument(
        "--cells",
        type=int_pair,
        default=None,
        metavar="MIN,MAX",
        help="image size in 28x28 cells, overriding the checkpoint's processor settings "
        "(e.g. 1024,1024 for the authors' evaluation)" + cells_help,
    )


PREDICTOR_FLAGS = {
    "threshold": Flag(type=probability),
    "refine": Flag(type=refine_spec, metavar=REFINE_METAVAR),
    "upsample": Flag(metavar="prob|logit|nearest"),
    "max_prompt_tokens": Flag(type=positive_int),
    "max_image_pixels": Flag(type=positive_int),
}
"""How `PredictorOptions` fields parse from the command line (names, defaults and help are the fields')."""

PREDICTOR_OPTIONS = ("threshold", "refine", "repetition_stop", "max_image_pixels")
"""The `PredictorOptions` a command that answers prompts offers: --threshold, --refine,
--no-repetition-stop, --max-image-pixels."""

GENERATION_FLAGS = {
    "max_new_tokens": Flag(type=non_negative_int),
    "top_k": Flag(type=non_negative_int),
}
"""How `GenerationConfig` fields parse from the command line (names, defaults and help are the fields')."""


def add_predictor_args(p: argparse.ArgumentParser, fields: Iterable[str] = PREDICTOR_OPTIONS) -> None:
    """Options of `stamp.inference.PredictorOptions` (`fields`); `from_args(PredictorOptions, args)`
    reads them back."""
    from stamp.inference.options import PredictorOptions

    add_dataclass_args(p, PredictorOptions, tuple(fields), **PREDICTOR_FLAGS)


def add_generation_args(
    p: argparse.ArgumentParser, fields: Iterable[str] = ("max_new_tokens",), **own: Flag
) -> None:
    """Decoding options of `stamp.inference.GenerationConfig` (`fields`); `own` replaces a field's
    `Flag` where a command has its own default. `from_args(GenerationConfig, args)` reads them back."""
    from stamp.inference.options import GenerationConfig

    add_dataclass_args(p, GenerationConfig, tuple(fields), **{**GENERATION_FLAGS, **own})


def add_output_args(p: argparse.ArgumentParser, out_help: str, *, default: str | None = None) -> None:
    """--out (required unless it has a default) and --force (replace what is there)."""
    if default is None:
        p.add_argument("--out", required=True, help=out_help)
    else:
        p.add_argument("--out", default=default, help=f"{out_help} (default {default})")
    p.add_argument("--force", action="store_true", help="overwrite existing output files")


def add_progress_arg(p: argparse.ArgumentParser, note: str = "") -> None:
    """--no-progress: no progress bar (`note`, e.g. what is shown instead, follows in parentheses)."""
    p.add_argument(
        "--no-progress", action="store_true", help=f"no progress bar{f' ({note})' if note else ''}"
    )
