"""How fast the training loop's data loader delivers batches: the trainer's own DataLoader (worker
processes, pinned memory on CUDA), timed without any model work.

    python benchmarks/bench_loader.py configs/tiny-synth/final.yaml [key=value ...] [--batches 40]

Prints samples/s delivered, the mean tensor bytes per batch (the plan aside) and the share of it that is pixel values, next to
the rate of building the same batches in this process (no workers), so the cost of moving batches
between processes shows. Compare its samples/s with the model's step time (profile_train_step.py) to
see which bounds training.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from stamp.train.config import TrainConfig
from stamp.train.trainer import Trainer
from stamp.yaml_config import load_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config")
    p.add_argument("overrides", nargs="*", help="key=value config overrides")
    p.add_argument("--batches", type=int, default=40, help="batches timed (after 2 x workers warm-up)")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="stamp-loader-"))
    try:
        cfg = load_config(TrainConfig, args.config, [*args.overrides, f"run.out_dir={tmp / 'run'}"])
        trainer = Trainer(cfg, progress=False)
        workers = cfg.data.num_workers
        warm = 2 * max(1, workers)
        it = iter(trainer.micro_batches(end_step=warm + args.batches))
        for _ in range(warm):
            next(it)
        t0, nbytes, pixel_bytes = time.perf_counter(), 0, 0
        for _ in range(args.batches):
            batch = next(it)
            nbytes += sum(v.numel() * v.element_size() for v in batch.values() if isinstance(v, torch.Tensor))
            pixel_bytes += batch["pixel_values"].numel() * batch["pixel_values"].element_size()
        dt = time.perf_counter() - t0
        bs = cfg.optim.batch_size
        print(
            f"loader ({workers} workers, pin_memory={trainer.accel.device.type == 'cuda'}): "
            f"{args.batches * bs / dt:.1f} samples/s, {nbytes / args.batches / 1e6:.1f} MB per batch "
            f"({100 * pixel_bytes / nbytes:.0f}% pixel values)"
        )
        n_local = max(2, args.batches // 8)
        t0 = time.perf_counter()
        for j in range(n_local):
            trainer.stream.batch(range(j * bs, (j + 1) * bs))
        dt = time.perf_counter() - t0
        print(f"building batches in this process: {n_local * bs / dt:.1f} samples/s per process")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
