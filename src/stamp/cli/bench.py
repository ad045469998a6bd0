"""`stamp bench`: time the mask pass against no cache reuse and the autoregressive baseline; request
latency and batched throughput (docs/PERFORMANCE.md).

    stamp bench                                  # bundled model, fp32 + bf16, N = 64..4096, H = 512
    stamp bench --preset synth --json out.json   # a random model of the sizes of configs/tiny-synth.yaml
    stamp bench --preset tiny --quick            # seconds: every code path, meaningless numbers
    stamp bench --preset qwen2-vl-2b --device cpu --dtypes bf16 --n 256,1024   # random, real dimensions
    stamp bench --preset qwen2-vl-2b --device cuda --parts train                # training step, batch 1,4,8
    stamp bench --report docs/results/bench-qwen2-vl-2b-cpu.json --markdown    # a saved run as tables
"""

from __future__ import annotations

import argparse
import json
import shlex
import signal
import sys
from pathlib import Path

from stamp.cli.args import add_command

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
    p.add_argument("--history", type=int, default=None, help="history tokens in the cache (default 512)")
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
        "--device", default=None, help="auto (default: the CPU, then CUDA if present), cpu, cuda, cuda:1 ..."
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


def _report(args) -> int:
    from stamp.bench.report import render

    path = Path(args.report)
    if not path.is_file():
        raise FileNotFoundError(f"bench results file not found: {path}")
    print(render(json.loads(path.read_text()), markdown=args.markdown))
    return 0


def settings_from_args(args):
    """`BenchSettings` from parsed arguments (quick mode first, explicit options on top)."""
    from stamp.bench.presets import PRESETS
    from stamp.bench.runner import BenchSettings, real_preset_settings

    device = args.device or "auto"
    if args.quick:
        s = BenchSettings.quick_settings(args.dtypes, device)
    elif args.preset in PRESETS:
        s = real_preset_settings(device)
    else:
        s = BenchSettings(device=device)
    mp, rq, tr = s.mask_pass, s.request, s.train
    if args.dtypes:
        mp.dtypes = rq.dtypes = list(args.dtypes)
    for value, obj, name in (
        (args.n, mp, "ns"),
        (args.history, mp, "history"),
        (args.repeats, mp, "repeats"),
        (args.ar_repeats, mp, "ar_repeats"),
        (args.ar_budget, mp, "ar_budget_s"),
        (args.ar_steps, mp, "ar_steps"),
        (args.image_sizes, rq, "image_sides"),
        (args.batch_sizes, rq, "batch_sizes"),
        (args.requests, rq, "requests"),
        (args.max_new_tokens, rq, "max_new_tokens"),
        (args.parts, s, "parts"),
        (args.train_batch_sizes, tr, "batch_sizes"),
        (args.grad_ckpt, tr, "grad_ckpt"),
        (args.train_image_size, tr, "image_side"),
        (args.train_steps, tr, "steps"),
    ):
        if value is not None:
            setattr(obj, name, value)
    if args.repeats is not None:
        rq.batch_repeats = args.repeats
    if mp.history < 1 or mp.repeats < 1 or rq.requests < 1 or rq.max_new_tokens < 0:
        raise ValueError("--history, --repeats and --requests must be >= 1, --max-new-tokens >= 0")
    if mp.ar_steps is not None and mp.ar_steps < 1:
        raise ValueError("--ar-steps must be >= 1")
    tr.lora = tr.lora or args.lora
    if tr.image_side < 28 or tr.steps < 1:
        raise ValueError("--train-image-size must be >= 28 and --train-steps >= 1")
    from stamp.bench.runner import resolve_devices

    resolve_devices(s.device)  # an unavailable device fails before the model loads
    return s


def run(args, argv: list[str] | None = None) -> int:
    """Run `stamp bench` for parsed `args`; prints the tables, writes --json. Returns the exit code."""
    from stamp.bench.mask_pass import DTYPES
    from stamp.bench.presets import PRESETS, PresetMemoryError
    from stamp.bench.report import check_writable, render, write_json
    from stamp.bench.runner import resolve_devices, run_bench
    from stamp.bench.setup import load_bench_model, set_threads

    if args.report:
        return _report(args)
    settings = settings_from_args(args)
    if args.json:
        check_writable(args.json, args.force)  # fail before the slow part
    threads = set_threads(args.threads)
    print(f"stamp bench: torch.set_num_threads({threads})")
    preset = args.preset or ("tiny" if args.quick and args.model is None else None)
    # a real-size preset is built where and as it first runs (no fp32 copy of a 7B model on the CPU)
    first_device = resolve_devices(settings.device)[0]
    if "mask_pass" in settings.parts:
        dtypes = settings.mask_pass.dtypes
    elif "request" in settings.parts:
        dtypes = settings.request.dtypes
    else:  # the training step alone: the weights in its precision (bf16 as a pretrained Qwen2-VL loads)
        dtypes = [settings.train.precision]
    try:
        if "train" in settings.parts and preset in PRESETS:  # before anything is allocated
            check_preset_training(preset, settings, DTYPES[dtypes[0]])
        model, source = load_bench_model(args.model, preset, first_device, args.attn, DTYPES[dtypes[0]])
    except PresetMemoryError as err:
        print(f"stamp bench: {err}", file=sys.stderr)
        return 2
    words = sys.argv[1:] if argv is None else ["bench", *argv]
    command = "stamp " + shlex.join(words) if words else "stamp bench"
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)  # e.g. `timeout`: keep what was measured
    try:
        doc = run_bench(model, source, settings, command=command)
    finally:
        signal.signal(signal.SIGTERM, previous)
    written = write_json(doc, args.json, force=args.force) if args.json else None  # before printing
    print()
    print(render(doc, markdown=args.markdown))
    if written:
        print(f"wrote {written}")
    if "interrupted" in doc:
        print(f"stamp bench: incomplete run (interrupted: {doc['interrupted']})", file=sys.stderr)
        return 130
    return 0


def check_preset_training(preset: str, settings, dtype) -> None:
    """Raise `PresetMemoryError` when the training step of a real-size preset cannot fit a device."""
    from stamp.bench.presets import PRESETS, PROCESSOR_SETTINGS, build_config, meta_model
    from stamp.bench.runner import resolve_devices
    from stamp.bench.train_step import cells_for, check_train_memory

    config, _ = build_config(preset)
    model = meta_model(config, dtype)
    cells = cells_for(PROCESSOR_SETTINGS, settings.train.image_side)
    for device in resolve_devices(settings.device):
        check_train_memory(preset, model, settings.train, cells, device)


def _stop_on_sigterm(signum, frame):
    from stamp.bench.runner import BenchInterrupted

    raise BenchInterrupted("SIGTERM")
