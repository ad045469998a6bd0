"""Where one training step's time goes: torch.profiler over a few optimizer steps of a training config.

    python benchmarks/profile_train_step.py configs/tiny-synth/final.yaml [key=value ...] [--steps 3]
        [--warmup 3] [--out DIR]

Every profiled step reuses one pre-built batch, so the figures are the model's and the optimizer's
alone (the data pipeline is measured by benchmarks/bench_data.py). Prints, per step: wall time, the
number of operator dispatches, device-to-host synchronisations (`.item()`, `.tolist()`, `nonzero`),
and on CUDA the kernel launches and the summed kernel time, i.e. how busy the GPU was; then the top
operators by self CPU time and (on CUDA) by device time. `--out DIR` also writes the tables and a
Chrome trace (trace.json.gz) there.
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from stamp.train.config import TrainConfig
from stamp.train.trainer import Trainer
from stamp.yaml_config import load_config

SYNC_OPS = ("aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::tolist")


class Repeat:
    """An iterator that yields the same batch forever (train_step pulls micro-batches from it)."""

    def __init__(self, batch):
        self.batch = batch

    def __iter__(self):
        return self

    def __next__(self):
        return self.batch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.add_argument("--steps", type=int, default=3, help="profiled optimizer steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--out", type=Path, default=None, help="write tables and a Chrome trace here")
    args = p.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="stamp-profile-"))
    try:
        cfg = load_config(
            TrainConfig,
            args.config,
            [*args.overrides, f"run.out_dir={tmp / 'run'}", "data.num_workers=0", "run.eval_every=0"],
        )
        trainer = Trainer(cfg, progress=False)
        device = trainer.accel.device
        batch = next(iter(trainer.micro_batches(end_step=1)))
        it = Repeat(batch)
        for _ in range(args.warmup):
            trainer.train_step(it)
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step(it)
        _sync(device)
        wall = (time.perf_counter() - t0) / args.steps

        activities = [ProfilerActivity.CPU]
        if device.type == "cuda":
            activities.append(ProfilerActivity.CUDA)
        with profile(activities=activities) as prof:
            for _ in range(args.steps):
                trainer.train_step(it)
            _sync(device)
        events = prof.key_averages()
        n = args.steps
        dispatches = sum(e.count for e in prof.events() if e.name.startswith("aten::") and _top_level(e))
        syncs = sum(e.count for e in events if e.key in SYNC_OPS)
        lines = [
            f"device {device}, batch {cfg.optim.batch_size} x accum {cfg.optim.grad_accum}, "
            f"precision {cfg.run.precision}, {sum(p.numel() for p in trainer.model.parameters())} parameters",
            f"per step: wall {wall * 1e3:.1f} ms (unprofiled), {dispatches / n:.0f} top-level aten dispatches, "
            f"{syncs / n:.0f} sync-capable ops (item/nonzero/...)",
        ]
        if device.type == "cuda":
            kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
            busy = sum(e.time_range.elapsed_us() for e in kernels)
            lines.append(
                f"per step: {len(kernels) / n:.0f} kernels, {busy / n / 1e3:.1f} ms of kernel time "
                f"({100 * busy / n / 1e3 / (wall * 1e3):.0f}% of the wall time)"
            )
        lines.append("")
        lines.append(events.table(sort_by="self_cpu_time_total", row_limit=30))
        if device.type == "cuda":
            lines.append(events.table(sort_by="self_device_time_total", row_limit=30))
        lines.append(events.table(sort_by="count", row_limit=20))
        text = "\n".join(lines)
        print(text)
        if args.out:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "profile.txt").write_text(text)
            trace = tmp / "trace.json"
            prof.export_chrome_trace(str(trace))
            with open(trace, "rb") as src, gzip.open(args.out / "trace.json.gz", "wb") as dst:
                shutil.copyfileobj(src, dst)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _top_level(event) -> bool:
    """An operator called from Python (not from inside another aten op): one dispatch each."""
    parent = event.cpu_parent
    return parent is None or not parent.name.startswith("aten::")


if __name__ == "__main__":
    sys.exit(main())
