"""How fast SynthRef makes samples (the training loop generates them online), and the collator after it.

    python benchmarks/bench_data.py                 # default mix, image sizes 224..448
    python benchmarks/bench_data.py --n 500 --threads 1

Prints median milliseconds per sample (and samples/s) over repeated runs after a warm-up: scene
rendering alone, the default task mix, each task alone, a few fixed image sizes, and, when
`stamp.processing.StampProcessor` and the shipped tokenizer are available, encoding + collation.
No assertions: numbers depend on the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np


def timed(fn: Callable[[int], object], n: int, repeats: int, warmup: int = 10) -> float:
    """Median over `repeats` runs of the mean seconds per call of fn(i), i = 0..n-1."""
    for i in range(warmup):
        fn(i)
    runs = []
    for r in range(repeats):
        t0 = time.perf_counter()
        for i in range(n):
            fn(r * n + i)
        runs.append((time.perf_counter() - t0) / n)
    return statistics.median(runs)


def report(name: str, seconds: float) -> None:
    print(f"{name:<38} {seconds * 1e3:8.2f} ms/sample  {1.0 / seconds:8.1f} samples/s")


def bench_synthref(n: int, repeats: int) -> None:
    from stamp.data.synthref import DEFAULT_TASK_WEIGHTS, SynthRef
    from stamp.data.synthref.scenes import SceneConfig, sample_scene

    cfg = SceneConfig()
    report("scene only (224..448)", timed(lambda i: sample_scene(np.random.default_rng(i), cfg), n, repeats))
    report("SynthRef train, default mix", timed(SynthRef("train").generate, n, repeats))
    for task in DEFAULT_TASK_WEIGHTS:
        ds = SynthRef("train", task_weights={task: 1.0})
        report(f"  task {task}", timed(ds.generate, max(n // 3, 20), repeats))
    for side in (224, 336, 448):
        ds = SynthRef("train", image_size_range=(side, side))
        report(f"  fixed size {side}x{side}", timed(ds.generate, max(n // 3, 20), repeats))


def bench_collator(n: int, repeats: int, batch_size: int, config: str) -> None:
    """encode_sample + collate with the image sizing and data of a training config (the bundled one)."""
    from stamp.data.synthref import SynthRef
    from stamp.processing import CELL, ProcessorSettings, StampProcessor
    from stamp.train.config import TrainConfig
    from stamp.train.tokenizer import load_synth_tokenizer
    from stamp.yaml_config import load_config

    cfg = load_config(TrainConfig, config)
    m = cfg.model
    settings = ProcessorSettings(m.min_cells * CELL * CELL, m.max_cells * CELL * CELL, m.system_prompt)
    processor = StampProcessor(load_synth_tokenizer(), settings)
    print(
        f"collator with {config}: images {cfg.data.image_size_range} px, {m.min_cells}..{m.max_cells} cells"
    )
    ds = SynthRef("train", image_size_range=tuple(cfg.data.image_size_range))
    samples = [ds.generate(i) for i in range(max(n, batch_size))]
    report(
        "processor.encode_sample",
        timed(lambda i: processor.encode_sample(samples[i % len(samples)]), n, repeats),
    )
    encoded = [processor.encode_sample(s) for s in samples[:batch_size]]
    per_batch = timed(lambda i: processor.collate(encoded), max(n // batch_size, 5), repeats)
    report(f"processor.collate (per sample, batch {batch_size})", per_batch / batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="samples per timed run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch/numpy threads (set before timing)")
    parser.add_argument(
        "--config", default="configs/tiny-synth.yaml", help="training config for the collator part"
    )
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    try:
        import torch

        torch.set_num_threads(args.threads)
    except ImportError:
        pass
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, threads={args.threads}"
    )
    bench_synthref(args.n, args.repeats)
    bench_collator(args.n, args.repeats, args.batch_size, args.config)


if __name__ == "__main__":
    main()
