"""Where the time of one mask pass goes: torch.profiler over `MaskPassBench.stamp` (the production
`decode_step` at a `<|seg|>`), split into weight matmuls, attention and everything else.

    python benchmarks/profile_mask_pass.py --preset qwen2-vl-2b --dtype bf16 --n 1024
    python benchmarks/profile_mask_pass.py --device cuda --with-cudnn   # allow sdpa's cuDNN backend, to compare

Prints ms per pass, the share of each category of self time, and the top operators.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

from stamp.bench.mask_pass import DTYPES, MaskPassBench, grid_for
from stamp.bench.setup import load_bench_model

CATEGORIES = {
    "weight matmuls": ("aten::mm", "aten::addmm", "aten::_addmm_activation"),
    "attention": ("scaled_dot_product", "flash_attention", "efficient_attention", "cudnn_attention"),
}


def _category(name: str) -> str:
    for category, keys in CATEGORIES.items():
        if any(k in name for k in keys):
            return category
    return "everything else"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model directory (default: the bundled model)")
    p.add_argument("--preset", default=None, help="a `stamp bench` preset, e.g. qwen2-vl-2b")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    p.add_argument("--n", type=int, default=1024)
    p.add_argument("--history", type=int, default=512)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument(
        "--with-cudnn",
        action="store_true",
        help="CUDA: let sdpa use its cuDNN backend, which STAMP leaves out (stamp.model.attention)",
    )
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, processor, _ = load_bench_model(args.model, args.preset, args.device, dtype=DTYPES[args.dtype])
    model.to(DTYPES[args.dtype])
    device = model.device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    backends = contextlib.nullcontext()
    if args.with_cudnn:  # replace the model's backend choice with "every backend allowed"
        import stamp.model.modeling as modeling

        modeling.attention_backends = lambda device: contextlib.nullcontext()
    bench = MaskPassBench(model, args.history, grid_for(args.n), tokenizer=processor.tokenizer)
    with backends:
        bench.stamp()  # warm-up
        sync()
        t0 = time.perf_counter()
        for _ in range(args.repeats):
            bench.stamp()
        sync()
        per_pass = (time.perf_counter() - t0) / args.repeats
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            bench.stamp()
            sync()
    events = prof.key_averages()
    attr = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    split: dict[str, float] = {}
    for e in events:
        split[_category(e.key)] = split.get(_category(e.key), 0.0) + getattr(e, attr)
    total = sum(split.values()) or 1.0
    print(f"{per_pass * 1e3:.1f} ms per mask pass (N={args.n}, H={args.history}, {args.dtype}, {device})")
    for category, value in sorted(split.items(), key=lambda kv: -kv[1]):
        print(f"  {category:16s} {100 * value / total:5.1f}% of self time ({value / 1e3:.1f} ms)")
    print(events.table(sort_by=attr, row_limit=15))
    return 0


if __name__ == "__main__":
    sys.exit(main())
