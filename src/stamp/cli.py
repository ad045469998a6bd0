"""`stamp` command line: a thin dispatcher onto the Python API (argument parsing only)."""

from __future__ import annotations

import argparse
import difflib
import os
import sys

from stamp.arguments import (
    REFINE_METAVAR,
    HelpFormatter,
    non_negative_int,
    positive_int,
    probability,
    refine_spec,
)
from stamp.arguments import int_pair as _pair
from stamp.bench.cli import add_parser as add_bench_parser
from stamp.serve.cli import add_parsers as add_serve_parsers

EXIT_USAGE = 2


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # a misspelled option suggests the closest valid one
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


def _add_model_args(p: argparse.ArgumentParser, *, adapters: bool = True, threshold: bool = True) -> None:
    """--model, --dtype, --device, --cells, --refine; and --base-model (LoRA adapters) and --threshold unless
    the command has no use for them."""
    p.add_argument("--model", default=None, help="model directory (default: the bundled model)")
    if adapters:
        p.add_argument(
            "--base-model", default=None, help="base model directory for a LoRA adapter checkpoint"
        )
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"], help="weights dtype")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:0 ...")
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
        type=_pair,
        default=None,
        metavar="MIN,MAX",
        help="image size in 28x28 cells, overriding the checkpoint's processor settings "
        "(e.g. 1024,1024 for the authors' evaluation)",
    )
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


def _floats(text: str) -> list[float]:
    """'0.3,0.4' -> [0.3, 0.4], each in (0, 1)."""
    try:
        vals = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected numbers like 0.3,0.4, got {text!r}") from None
    if not vals or not all(0.0 < v < 1.0 for v in vals):
        raise argparse.ArgumentTypeError(f"thresholds must lie in (0, 1), got {text!r}")
    return vals


def _weights(text: str) -> dict[str, float]:
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


EXAMPLES = {
    "demo": """examples:
  stamp demo                                     # a SynthRef scene; writes stamp_out/demo/
  stamp demo --image shapes.png --prompt "Segment the red circle." --out demo_out --force""",
    "segment": """examples:
  stamp segment scene.png --prompt "Please segment the red circle." --out out/
  stamp segment a.png b.png --prompt "Segment the blue square." --out out/   # out/a/, out/b/, summary.json
  stamp segment photos/ --prompt "Segment the dog." --model /models/stamp-2b --out out/ --force

One image file: result.json, overlay.png and mask_<k>.png directly in --out. Several images or a
folder: one folder per image, --out/<image name>/, and --out/summary.json; they run in batches of
--batch-size.""",
    "train": """examples:
  stamp train tiny-synth                         # a shipped recipe by name, from any folder
  stamp train configs/tiny-synth.yaml optim.lr=5e-4 run.steps=200
  stamp train tiny-synth --resume                # continue from the newest checkpoint""",
    "eval": """examples:
  stamp eval --data synthref --split val --limit 200 --out synth.json
  stamp eval --data refcoco:/data/lisa --split val --model /models/stamp-2b --out results.json
  stamp eval --data grefcoco:/data/lisa --split val --save-masks masks/ --out g.json""",
    "calibrate": """examples:
  stamp calibrate --data synthref --model runs/x/model --write
  stamp calibrate --data refcoco:/data/lisa --split val --model /models/stamp-2b --out sweep.json""",
    "compare": """examples:
  stamp compare a.json b.json
  stamp compare base.json new.json --json diff.json --resamples 5000""",
    "data": """examples:
  stamp data synth --out synth_refer --split val --n 200 --format refer""",
    "synth": """examples:
  stamp data synth --out synth_refer --split val --n 200 --format refer
  stamp eval --data refcoco:synth_refer --split val          # reads what the line above wrote
  stamp data synth --out synth_grefer --n 300 --format grefer   # then --data grefcoco:synth_grefer""",
    "bench": """examples:
  stamp bench                                    # bundled model, fp32 + bf16, N = 64..4096
  stamp bench --preset synth --json out.json     # a random model of configs/tiny-synth.yaml's sizes
  stamp bench --preset tiny --quick              # seconds: every code path, meaningless numbers""",
}
_RAW = HelpFormatter


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="stamp",
        description="STAMP: chat about an image and segment in one pass.",
        epilog='examples:\n  stamp demo\n  stamp segment scene.png --prompt "Segment the red circle." '
        "--out out/\n  stamp <command> --help        # options and examples of each command",
        formatter_class=_RAW,
    )
    parser.add_argument("--version", action="version", version=f"stamp-seg {_version()}")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="show third-party warnings and loading bars (hidden by default); also after the command",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def command(name: str, help_text: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, epilog=EXAMPLES.get(name), formatter_class=_RAW, **kwargs)

    demo = command("demo", "run the bundled model on a SynthRef scene (or --image) and write an overlay")
    _add_model_args(demo)
    demo.add_argument("--image", default=None, help="an image file instead of a generated scene")
    demo.add_argument("--prompt", default=None, help="segmentation request (default: the scene's own)")
    demo.add_argument(
        "--question", default="How many shapes are in the image?", help="a question without a mask"
    )
    demo.add_argument(
        "--seed", type=non_negative_int, default=0, help="which SynthRef val scene to render (default 0)"
    )
    demo.add_argument("--out", default="stamp_out/demo", help="output directory (default stamp_out/demo)")
    demo.add_argument("--force", action="store_true", help="overwrite existing output files")

    seg = command("segment", "answer a prompt about images; write result.json, masks, overlay per image")
    seg.add_argument("images", nargs="+", metavar="IMAGE", help="image files and/or folders of images")
    seg.add_argument("--prompt", required=True, help="what to segment or ask")
    _add_model_args(seg)
    seg.add_argument("--out", required=True, help="output directory")
    seg.add_argument("--force", action="store_true", help="overwrite existing output files")
    seg.add_argument(
        "--max-new-tokens",
        type=non_negative_int,
        default=128,
        help="answer token budget (default 128)",
    )
    seg.add_argument(
        "--answer-prefix",
        default=None,
        help='force the answer to start with this, e.g. "Sure, it is <|seg|>"',
    )
    seg.add_argument(
        "--batch-size",
        type=positive_int,
        default=4,
        help="images answered together in one batched generation (default 4)",
    )

    tr = command("train", "train per a YAML config or shipped recipe, with key=value overrides")
    tr.add_argument(
        "config", help="a shipped recipe's name (tiny-synth, stamp-2b-finetune, ...) or a YAML file"
    )
    tr.add_argument("overrides", nargs="*", help="overrides like optim.lr=3e-4 run.steps=100")
    tr.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint in run.out_dir"
    )
    tr.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")

    ev = command("eval", "evaluate on a data split; write results.json (cIoU, gIoU, N-acc, ...)")
    ev.add_argument(
        "--data",
        required=True,
        help="KIND:PATH, e.g. refcoco:/data/lisa, grefcoco:/data/lisa, reasonseg:/data/reasonseg, or "
        "synthref (generated: no path)",
    )
    ev.add_argument(
        "--split", default="val", help="the data's split: val, testA, testB, test, ... (default val)"
    )
    ev.add_argument("--out", default="results.json", help="results file (never overwritten without --force)")
    ev.add_argument(
        "--image-root", default=None, help="where the images are (default: the LISA layout under the root)"
    )
    ev.add_argument(
        "--limit",
        type=positive_int,
        default=None,
        help="evaluate only the first N samples (images with their requests); a sample may hold several "
        "expressions, each scored: the results report both counts",
    )
    ev.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of SynthRef's scenes and of the question templates (default 0)",
    )
    ev.add_argument(
        "--force-seg",
        action="store_true",
        help='force answers to start with "Sure, it is <|seg|>" (as the literature does)',
    )
    ev.add_argument(
        "--save-masks",
        default=None,
        metavar="DIR",
        help="write each predicted mask as a PNG into this folder (a folder that is not empty needs "
        "--force, which replaces its masks)",
    )
    ev.add_argument(
        "--max-new-tokens",
        type=non_negative_int,
        default=None,
        help="answer token budget (default: the protocol's)",
    )
    ev.add_argument(
        "--protocol",
        default="stamp",
        choices=["stamp", "authors"],
        help="how to ask and score: stamp (default) or authors (the paper's: their question templates, "
        "1024 cells, 1024 answer tokens, logit 0, nearest upsampling; see docs/EVALUATION.md)",
    )
    ev.add_argument("--force", action="store_true", help="overwrite --out and replace --save-masks")
    ev.add_argument("--no-progress", action="store_true", help="no progress bar")
    ev.add_argument(
        "--synth-size", type=_pair, default=None, metavar="MIN,MAX", help="SynthRef image size range in px"
    )
    ev.add_argument(
        "--synth-tasks",
        type=_weights,
        default=None,
        metavar="TASK=W,...",
        help="SynthRef task mix, e.g. refer=0.5,vqa=0.3 (default: the split's mix)",
    )
    _add_model_args(ev)

    cal = command(
        "calibrate",
        "choose the model's mask threshold on held-out data (one model pass, many thresholds)",
        description="Sweep the foreground threshold on held-out data and pick the one with the best mean "
        "of cIoU, gIoU, N-acc and T-acc (those the data reports). Use data you do not report: for "
        "SynthRef, the default --seed 1 of val (the reported val uses seed 0).",
    )
    cal.add_argument("--data", required=True, help="KIND:PATH, as for stamp eval")
    cal.add_argument("--split", default="val", help="the data's split (default val)")
    cal.add_argument(
        "--seed", type=int, default=1, help="SynthRef scenes seed (default 1: not the reported 0)"
    )
    cal.add_argument("--limit", type=positive_int, default=600, help="first N samples (default 600)")
    cal.add_argument(
        "--thresholds",
        type=_floats,
        default=None,
        metavar="T,T,...",
        help="candidate thresholds in (0, 1) (default 0.2,0.25,...,0.5)",
    )
    cal.add_argument("--image-root", default=None, help="where the images are (default: the LISA layout)")
    cal.add_argument(
        "--synth-size", type=_pair, default=None, metavar="MIN,MAX", help="SynthRef image size range in px"
    )
    cal.add_argument(
        "--max-new-tokens", type=non_negative_int, default=64, help="answer token budget (default 64)"
    )
    cal.add_argument(
        "--out", default=None, help="write the sweep as JSON (never overwritten without --force)"
    )
    cal.add_argument("--force", action="store_true", help="overwrite --out")
    cal.add_argument(
        "--write", action="store_true", help="store the chosen threshold in the model directory's config.json"
    )
    cal.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_model_args(cal, adapters=False, threshold=False)

    cmp_ = command(
        "compare",
        "compare two results.json of stamp eval on the same samples (paired bootstrap intervals)",
        description="B - A for cIoU, gIoU, N-acc, T-acc, VQA accuracy and their mean, recomputed from the "
        "per-sample records, with a paired bootstrap interval (the same resampled samples for both).",
    )
    cmp_.add_argument("a", metavar="A.json", help="results of stamp eval (the baseline)")
    cmp_.add_argument("b", metavar="B.json", help="results of stamp eval on the same samples")
    cmp_.add_argument("--resamples", type=positive_int, default=2000, help="bootstrap draws (default 2000)")
    cmp_.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    cmp_.add_argument("--level", type=probability, default=0.95, help="interval level (default 0.95)")
    cmp_.add_argument("--json", default=None, metavar="OUT", help="also write the comparison as JSON")
    cmp_.add_argument("--force", action="store_true", help="overwrite --json OUT")

    data = command("data", "data tools: stamp data synth")
    dsub = data.add_subparsers(
        dest="data_command", metavar="DATA_COMMAND", parser_class=_Parser, required=True
    )
    synth = dsub.add_parser(
        "synth",
        help="write SynthRef in a real benchmark's on-disk format",
        description="Write SynthRef samples in a real benchmark's on-disk format, readable by stamp eval "
        "--data KIND:OUT (refer -> refcoco:OUT, grefer -> grefcoco:OUT, reasonseg -> reasonseg:OUT, "
        "llava -> llava:OUT/conversations.json) and by outside tools that read those formats.",
        epilog=EXAMPLES["synth"],
        formatter_class=_RAW,
    )
    synth.add_argument("--out", required=True, help="output folder (written whole, then renamed into place)")
    synth.add_argument(
        "--split",
        default="val",
        choices=["train", "val", "test", "compositional"],
        help="SynthRef split to draw from (default val)",
    )
    synth.add_argument("--n", type=positive_int, default=100, help="number of samples (default 100)")
    synth.add_argument(
        "--format",
        default="refer",
        choices=["refer", "grefer", "reasonseg", "llava"],
        help="refer: RefCOCO in the LISA layout; grefer: gRefCOCO (with no-target requests); reasonseg: "
        "ReasonSeg's image + JSON pairs; llava: LLaVA conversations (VQA) (default refer)",
    )
    synth.add_argument("--seed", type=int, default=0, help="SynthRef scenes seed (default 0)")
    synth.add_argument("--force", action="store_true", help="replace an existing output folder")
    synth.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_serve_parsers(sub, _Parser)
    bench = add_bench_parser(sub, _Parser)
    bench.description = (
        "Time the mask pass (N placeholders in one forward against the cache) against recomputing the "
        "history and against autoregressive patch labels; request latency and batched throughput."
    )
    bench.epilog, bench.formatter_class = EXAMPLES["bench"], _RAW
    for p in [*sub.choices.values(), synth]:  # `stamp segment ... --verbose` as well as `stamp --verbose ...`
        p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


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
    try:
        from stamp.commands import COMMANDS

        return COMMANDS[args.command](args) or 0
    except KeyboardInterrupt:
        print("stamp: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - user-facing errors become one line
        from stamp.commands import USER_ERRORS

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


def _exit(code: int) -> None:
    """End the process. A rank of a multi-process run (accelerate / torchrun set WORLD_SIZE) ends with
    os._exit once its output is flushed: by then its work is written (checkpoints and results files are
    renamed into place, logs closed), and gloo's destructors at interpreter shutdown have aborted a rank
    and hung another here after all work was done."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    _exit(main())


__all__ = ["main", "build_parser", "quiet_third_parties", "CLIError"]
