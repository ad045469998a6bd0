"""Where a decode step's time goes, per dtype: torch.profiler over the autoregressive baseline of
`stamp bench` (one token per step on the cached history) and over STAMP's mask pass.

    python benchmarks/profile_decode.py [--model PATH] [--device cuda] [--dtypes fp32,bf16]
        [--history 512] [--steps 32] [--out DIR]

Prints ms per decode step and per mask pass for each dtype, then the top operators of the decode
steps by self CPU time and (on CUDA) by device time, so a dtype that decodes far slower than another
shows which operator or host-side work is responsible.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from stamp.bench.mask_pass import DTYPES, MaskPassBench
from stamp.bench.setup import load_bench_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model directory (default: the bundled model)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtypes", default="fp32,bf16")
    p.add_argument("--history", type=int, default=512)
    p.add_argument("--steps", type=int, default=32, help="decode steps profiled")
    p.add_argument("--out", type=Path, default=None, help="write the tables there (decode_profile.txt)")
    args = p.parse_args(argv)

    model, processor, _ = load_bench_model(args.model, device=args.device)
    device = model.device
    lines = []
    for name in args.dtypes.split(","):
        model.to(DTYPES[name])
        bench = MaskPassBench(model, args.history, (8, 8), tokenizer=processor.tokenizer)
        bench.autoregressive(steps=4)  # warm-up
        bench.stamp()
        _sync(device)
        t0 = time.perf_counter()
        bench.autoregressive(steps=args.steps)
        _sync(device)
        per_step = (time.perf_counter() - t0) / args.steps
        t0 = time.perf_counter()
        for _ in range(5):
            bench.stamp()
        _sync(device)
        per_pass = (time.perf_counter() - t0) / 5
        lines.append(
            f"== {name}: {per_step * 1e3:.2f} ms per decode step, {per_pass * 1e3:.2f} ms per mask pass (N=64)"
        )
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        with profile(activities=activities) as prof:
            bench.autoregressive(steps=args.steps)
            _sync(device)
        events = prof.key_averages()
        lines.append(events.table(sort_by="self_cpu_time_total", row_limit=20))
        if device.type == "cuda":
            lines.append(events.table(sort_by="self_device_time_total", row_limit=20))
        print("\n".join(lines[-3 if device.type == "cuda" else -2 :]), flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "decode_profile.txt").write_text("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
