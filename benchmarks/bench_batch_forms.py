"""Padded batches on the CPU: the mask-pass forms side by side in one run, on the same images.

    python benchmarks/bench_batch_forms.py                  # bundled model, fp32, 8 SynthRef scenes
    python benchmarks/bench_batch_forms.py --dtype bf16 --images 8 --repeats 5

The same SynthRef val scenes (224-448 px, so grids differ and the batch is padded) go through
`StampPredictor.predict_batch` one at a time (batch 1) and all at once (batch B) with the mask pass
forced to each form (`STAMP_MASK_PASS`): `one_forward` (a padded, masked forward of B x (1 + n_max)
queries), `per_row` (each row at a `<|seg|>` alone against its unpadded cache) and, for batch 1, the
default `auto`. The settings alternate within each repeat; no refinement unless --refine guided. Prints the median wall time of covering
all images, the generation stages summed over the calls (prefill, decode, mask; vision and
refinement are outside them), images/s and the ratio to batch 1, and whether the answers and masks
agree with batch 1's (token ids equal, largest mask-logit difference).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from stamp.bench.request import _scene_files
from stamp.images import load_image
from stamp.inference import StampPredictor
from stamp.inference.generation import MASK_PASS_ENV
from stamp.models import load_model

SETTINGS = [(1, "auto"), ("B", "one_forward"), ("B", "per_row")]


def _run(pred, items, bsz, form, max_new_tokens):
    os.environ[MASK_PASS_ENV] = form
    stages = {"prefill": 0.0, "decode": 0.0, "mask": 0.0}
    results = []
    start = time.perf_counter()
    for i in range(0, len(items), bsz):
        out = pred.predict_batch(items[i : i + bsz], answer_prefix="<|seg|>", max_new_tokens=max_new_tokens)
        for k in stages:  # one timer per generate() call: every row of a batch reports the same totals
            stages[k] += out[0].timings.get(k, 0.0)
        results.extend(out)
    return time.perf_counter() - start, stages, results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model directory (default: the bundled model)")
    p.add_argument("--images", type=int, default=8, help="scenes, and the batch size B")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--refine", default="none", help="none (default) | guided: the predictor's refinement")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    dtype = "float32" if args.dtype == "fp32" else "bfloat16"
    pred = StampPredictor(load_model(args.model, dtype=dtype, device="cpu"), refine=args.refine)
    with tempfile.TemporaryDirectory() as tmp:
        items = [
            (load_image(path), prompt) for path, prompt in _scene_files(args.images, Path(tmp), (224, 448))
        ]
    cells = [
        int(pred.processor.encode_image(im).grid_thw.prod()) // pred.model.merge_size**2 for im, _ in items
    ]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}; cells per image {cells}"
    )
    times = {s: [] for s in SETTINGS}
    stage_runs = {s: [] for s in SETTINGS}
    outputs = {}
    for r in range(args.repeats + 1):  # the first round warms up
        for setting in SETTINGS:
            bsz = args.images if setting[0] == "B" else 1
            sec, stages, results = _run(pred, items, bsz, setting[1], args.max_new_tokens)
            if r:
                times[setting].append(sec)
                stage_runs[setting].append(stages)
            outputs[setting] = results
    os.environ.pop(MASK_PASS_ENV, None)
    base = statistics.median(times[SETTINGS[0]])
    ref = outputs[SETTINGS[0]]
    print(
        "| batch | mask-pass form | ms for all images [min-max] | prefill ms | decode ms | mask ms | images/s | x batch 1 | same answers | max mask diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for setting in SETTINGS:
        t = times[setting]
        med = statistics.median(t)
        st = {
            k: 1e3 * statistics.median(s[k] for s in stage_runs[setting])
            for k in ("prefill", "decode", "mask")
        }
        same = all(a.token_ids == b.token_ids for a, b in zip(ref, outputs[setting]))
        diff = max(
            (
                float(np.abs(ma.patch_logits - mb.patch_logits).max())
                for a, b in zip(ref, outputs[setting])
                for ma, mb in zip(a.masks, b.masks)
            ),
            default=0.0,
        )
        bsz = args.images if setting[0] == "B" else 1
        print(
            f"| {bsz} | {setting[1]} | {1e3 * med:.0f} [{1e3 * min(t):.0f}-{1e3 * max(t):.0f}] "
            f"| {st['prefill']:.0f} | {st['decode']:.0f} | {st['mask']:.0f} "
            f"| {len(items) / med:.2f} | {base / med:.2f} | {'yes' if same else 'NO'} | {diff:.1e} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
