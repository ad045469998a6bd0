"""`stamp bench`: its options; the run itself is `stamp.bench.runner.run_command` (docs/PERFORMANCE.md)."""

from __future__ import annotations

import argparse

from stamp.cli.args import add_command, device_or_auto

EXAMPLES = """examples:
  stamp bench                                    # bundled model, fp32 + bf16, N = 64..4096
  stamp bench --preset qwen2-vl-2b --device cpu --dtypes bf16 --n 256,1024 --json out.json
  stamp bench --preset tiny --quick              # seconds: every code path, meaningless numbers
  stamp bench --preset qwen2-vl-2b --device cuda --parts train --json train.json   # full fine-tune step
  stamp bench --preset qwen2-vl-7b --device cuda --parts train --lora --grad-ckpt on   # LoRA step
  stamp bench --report out.json --markdown       # a saved run as tables"""
DESCRIPTION = (
    "Time the mask pass (N placeholders in one forward against the cache) against recomputing the "
    "history and against autoregressive patch labels; request latency and batched throughput; with "
    "--parts train, the training step (samples/s and peak memory)."
)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _dtype_list(text: str) -> list[str]:
    from stamp.bench.mask_pass import DTYPES

    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in DTYPES]
    if not values or bad:
        raise argparse.ArgumentTypeError(f"dtypes must be among {', '.join(DTYPES)}, got {text!r}")
    return values


def _part_list(text: str) -> list[str]:
    from stamp.bench.runner import PARTS

    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in PARTS for v in values):
        raise argparse.ArgumentTypeError(f"parts must be among {', '.join(PARTS)}, got {text!r}")
    return values


def _switch_list(text: str) -> list[bool]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    if not values or any(v not in ("on", "off") for v in values):
        raise argparse.ArgumentTypeError(f"expected on, off or on,off, got {text!r}")
    return [v == "on" for v in values]


def configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the `stamp bench` options to `p`."""
    p.add_argument("--model", default=None, help="model directory (default: the bundled model)")
    p.add_argument(
        "--preset",
        default=None,
        help="tiny | synth (random, the sizes of configs/tiny-synth.yaml) | qwen2-vl-2b | qwen2-vl-7b | "
        "qwen2.5-vl-3b | qwen2.5-vl-7b (random, the published dimensions) | a training YAML",
    )
    p.add_argument(
        "--json", default=None, metavar="OUT", help="write the results as JSON (schema: docs/PERFORMANCE.md)"
    )
    p.add_argument("--force", action="store_true", help="overwrite --json OUT")
    p.add_argument(
        "--dtypes", type=_dtype_list, default=None, help="comma-separated: fp32,bf16 (default) or fp16"
    )
    p.add_argument("--n", type=_int_list, default=None, help="placeholder counts (default 64,256,1024,4096)")
    p.add_argument(
        "--history", type=int, default=None, help="text tokens after the image, before <|seg|> (default 512)"
    )
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per measurement (default 5)")
    p.add_argument(
        "--ar-repeats", type=int, default=None, help="repeats of the autoregressive baseline (default 3)"
    )
    p.add_argument(
        "--ar-budget", type=float, default=None, help="seconds after which the baseline stops repeating"
    )
    p.add_argument(
        "--ar-steps",
        type=int,
        default=None,
        help="time this many autoregressive steps at each end and scale to N (default: all N steps)",
    )
    p.add_argument(
        "--batch-sizes", type=_int_list, default=None, help="throughput batch sizes (default 1,4,8)"
    )
    p.add_argument(
        "--image-sizes",
        type=_int_list,
        default=None,
        help="square request images of these sides in pixels, e.g. 448,896 (default: SynthRef's sizes)",
    )
    p.add_argument("--requests", type=int, default=None, help="timed requests per dtype (default 5)")
    p.add_argument(
        "--max-new-tokens", type=int, default=None, help="answer tokens after <|seg|> (default 16)"
    )
    p.add_argument(
        "--parts",
        type=_part_list,
        default=None,
        help="mask_pass,request,train (default: mask_pass,request; train times the training step)",
    )
    p.add_argument(
        "--train-batch-sizes", type=_int_list, default=None, help="training step batch sizes (default 1,4,8)"
    )
    p.add_argument(
        "--grad-ckpt",
        type=_switch_list,
        default=None,
        help="gradient checkpointing for the training step: on, off or on,off (default: both)",
    )
    p.add_argument(
        "--lora",
        action="store_true",
        help="train the authors' LoRA (r 64, alpha 128, rsLoRA; embed_tokens, lm_head, classifier in full) "
        "instead of every parameter",
    )
    p.add_argument(
        "--train-image-size",
        type=int,
        default=None,
        help="side of the training step's square images in pixels (default 896: 1,024 cells)",
    )
    p.add_argument(
        "--train-steps", type=int, default=None, help="timed training steps per configuration (default 5)"
    )
    p.add_argument("--quick", action="store_true", help="tiny sizes and repeats: a smoke test in seconds")
    p.add_argument(
        "--device",
        type=device_or_auto,
        default=None,
        help="auto (default: the CPU, then CUDA if present), cpu, cuda, cuda:1 ...",
    )
    p.add_argument(
        "--attn", default=None, choices=["sdpa", "eager"], help="override the attention implementation"
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (default: all cores allowed)")
    p.add_argument(
        "--markdown", action="store_true", help="print the tables as markdown (for docs/PERFORMANCE.md)"
    )
    p.add_argument(
        "--report", default=None, metavar="FILE", help="print a saved run (a --json file) as tables and exit"
    )
    return p


def add_parser(sub):
    p = add_command(
        sub,
        "bench",
        "time the mask pass against no cache reuse and autoregressive labels; request latency, throughput",
        EXAMPLES,
        description=DESCRIPTION,
    )
    return configure(p)


def run(args, argv: list[str] | None = None) -> int:
    """Run `stamp bench` for parsed `args` (`stamp.bench.runner.run_command`). Returns the exit code."""
    import shlex
    import sys

    from stamp.bench.runner import run_command

    words = sys.argv[1:] if argv is None else ["bench", *argv]
    return run_command(args, "stamp " + shlex.join(words) if words else "stamp bench")
