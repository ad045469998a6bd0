"""The `stamp` dispatcher: builds the parser from the command modules, runs the chosen one, turns the
user's errors into one line and exit status 2."""

from __future__ import annotations

import argparse
import os
import sys
from importlib import import_module

from stamp.cli.args import EXIT_FAULT, EXIT_USAGE, HelpFormatter, Parser

COMMANDS = (  # (module in stamp.cli, its function adding the parser, its function running it)
    ("demo", "add_parser", "run"),
    ("segment", "add_parser", "run"),
    ("chat", "add_parser", "run"),
    ("train", "add_parser", "run"),
    ("eval", "add_parser", "run"),
    ("calibrate", "add_parser", "run"),
    ("compare", "add_parser", "run"),
    ("data", "add_parser", "run"),
    ("export", "add_parser", "run"),
    ("serve", "add_parser", "run"),
    ("serve", "add_web_parser", "run_web"),
    ("bench", "add_parser", "run"),
)
EPILOG = """examples:
  stamp demo
  stamp segment scene.png --prompt "Segment the red circle." --out out/
  stamp <command> --help        # options and examples of each command"""


def build_parser() -> Parser:
    parser = Parser(
        prog="stamp",
        description="STAMP: chat about an image and segment in one pass.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"stamp-seg {_version()}")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show third-party warnings and loading bars (hidden by default); also after the command",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    for module, add, run in COMMANDS:
        mod = import_module(f"stamp.cli.{module}")
        getattr(mod, add)(sub).set_defaults(run=getattr(mod, run))
    for p in _all_subparsers(parser):  # `stamp segment ... --verbose` as well as `stamp --verbose ...`
        p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


def _all_subparsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for p in action.choices.values():
                found += [p, *_all_subparsers(p)]
    return found


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("stamp-seg")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if (
        extra
        and getattr(args, "overrides", None) is not None
        and all("=" in e and not e.startswith("-") for e in extra)
    ):
        args.overrides = list(args.overrides) + extra  # key=value overrides placed after an option
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.command is None:
        parser.print_help()
        return 0
    if not args.verbose:
        quiet_third_parties()
    else:  # the loading bars of stamp.model.quiet, asked for
        import logging

        logging.getLogger("stamp").setLevel(logging.INFO)
    try:
        return args.run(args) or 0
    except KeyboardInterrupt:
        print("stamp: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - user-facing errors become one line
        from stamp.cli.common import USER_ERRORS
        from stamp.faults import WriteError

        if isinstance(exc, WriteError):  # the machine's fault (a full disk): said, what is safe named
            print(f"stamp {args.command}: error: {exc}", file=sys.stderr)
            return EXIT_FAULT
        if isinstance(exc, USER_ERRORS):
            print(f"stamp: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        raise


def quiet_third_parties() -> None:
    """Hide what libraries print on their own: transformers' and huggingface_hub's loading bars and
    notices, DeepSpeed's accelerator notice (printed on stdout), other packages' Python warnings.
    Errors still show, and so do STAMP's own messages and progress bars. `--verbose` skips this."""
    import logging
    import warnings

    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if "transformers" in sys.modules:  # imported already: it read the variables above before they were set
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    for name in ("DeepSpeed", "accelerate", "torch.distributed"):
        logging.getLogger(name).addFilter(_errors_only)
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=r"stamp(\.|$)")


def _errors_only(record) -> bool:
    import logging

    return record.levelno >= logging.ERROR


def run_and_exit(argv: list[str] | None = None) -> None:
    """`python -m stamp`: run, then end the process. A rank of a multi-process run (accelerate / torchrun
    set WORLD_SIZE) ends with os._exit once its output is flushed (see `stamp.cli.common.exit_now`)."""
    code = main(argv)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from stamp.cli.common import exit_now

        exit_now(code)
    sys.exit(code)
