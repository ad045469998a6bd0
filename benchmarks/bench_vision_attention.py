"""The vision tower with packed attention (one call per distinct image size and layer) against
transformers' image-by-image loop, side by side in one run, forward and forward + backward.

    python benchmarks/bench_vision_attention.py                       # bundled model, 16 images, CPU
    python benchmarks/bench_vision_attention.py --images 64 --device cuda --bf16

Images are random, of sizes drawn from --size MIN,MAX px (the training range by default), the same
images for both modes; the two modes alternate within each repeat. Prints median milliseconds (with
min-max), the ratio per_image / packed, and the largest feature difference between the modes.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

import numpy as np
import torch
from PIL import Image

from stamp.model.vision_attention import ENV


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model directory (default: the bundled model)")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--size", default="224,256", help="image side range MIN,MAX in px")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast, as training runs")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from stamp.models import load_model

    device = torch.device(args.device)
    model = load_model(args.model, dtype="float32", device=args.device).train()
    lo, hi = (int(v) for v in args.size.split(","))
    rng = np.random.default_rng(0)
    encs = []
    for _ in range(args.images):
        h, w = (int(v) for v in rng.integers(lo, hi + 1, size=2))
        encs.append(
            model.processor.encode_image(Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)))
        )
    pv = torch.cat([e.pixel_values for e in encs]).to(device)
    grid = torch.stack([e.grid_thw for e in encs]).to(device)
    sizes = {tuple(int(v) for v in g) for g in grid.tolist()}
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()

    def run(mode: str, backward: bool) -> tuple[float, torch.Tensor]:
        os.environ[ENV] = mode
        model.zero_grad(set_to_none=True)
        _sync(device)
        t0 = time.perf_counter()
        with autocast, torch.set_grad_enabled(backward):
            feats = torch.cat(model.encode_images(pv, grid))
        if backward:
            feats.float().pow(2).mean().backward()
        _sync(device)
        return 1000 * (time.perf_counter() - t0), feats.detach().float()

    modes = ("per_image", "packed")
    for m in modes:  # warm-up
        run(m, True)
    print(
        f"{args.images} images, {len(sizes)} distinct grids, {lo}-{hi} px, {args.device}"
        f"{', bf16 autocast' if args.bf16 else ', fp32'}, {torch.get_num_threads()} threads"
    )
    print(f"{'pass':<18} {'per_image ms':>16} {'packed ms':>16} {'ratio':>7}")
    for backward in (False, True):
        times: dict[str, list[float]] = {m: [] for m in modes}
        outs = {}
        for _ in range(args.repeats):
            for m in modes:
                ms, outs[m] = run(m, backward)
                times[m].append(ms)
        med = {m: statistics.median(v) for m, v in times.items()}
        cells = "".join(f"{med[m]:8.1f} ({min(times[m]):.0f}-{max(times[m]):.0f})" for m in modes)
        name = "forward+backward" if backward else "forward"
        print(f"{name:<18} {cells} {med['per_image'] / med['packed']:7.2f}")
    diff = (outs["per_image"] - outs["packed"]).abs().max().item()
    scale = outs["per_image"].abs().max().item()
    print(
        f"max |feature difference| between the modes: {diff:.2e} (largest |feature| {scale:.2e}, relative {diff / max(scale, 1e-12):.1e})"
    )
    os.environ.pop(ENV, None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
