"""The kernel choices behind the CPU request stages at a preset's real shapes, measured side by side.

    python benchmarks/cpu_kernels.py [--preset qwen2-vl-2b] [--context 1170] [--patches 4096]
        [--compile-blocks 4] [--json FILE]

Each line compares what a stage could run, alternating the candidates in one process (median ms):

- decode attention, one query over `--context` cached keys: sdpa with no mask (transformers then asks
  for sdpa's grouped-query kernel) against sdpa with a (1, 1, 1, K) mask (transformers then packs each
  key/value head's queries into one small attention) -- what `generation._forward` relies on;
- decode matmuls, one row per weight and more: `F.linear` with oneDNN (PyTorch's pick for every bf16
  matmul) against PyTorch's own kernel (oneDNN off), at every weight shape of a decoder layer and the
  lm_head, in GB/s of weights read -- what `generation.matvec_kernels` relies on;
- vision attention over `--patches` patches: bf16 sdpa, fp32 sdpa, and bf16 sdpa in query chunks --
  the ceiling the vision tower's attention has on this machine;
- the vision tower's first `--compile-blocks` blocks, eager against `torch.compile` (dynamic shapes):
  whether compiling the tower pays (the project keeps a switch only for a gain of 10% or more).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from stamp.bench.flops import TextDims, matmul_peak
from stamp.bench.presets import PRESETS, build_config
from stamp.bench.stages import memory_bandwidth
from stamp.inference.generation import matvec_kernels


def _alternate(fns: dict, repeats: int) -> dict[str, float]:
    """Median ms of each function, called in turn `repeats` times after one warm-up call each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def decode_attention(dims: TextDims, context: int, repeats: int) -> dict:
    dt = torch.bfloat16
    q = torch.randn(1, dims.heads, 1, dims.head_dim, dtype=dt)
    k, v = (torch.randn(1, dims.kv_heads, context, dims.head_dim, dtype=dt) for _ in range(2))
    group = dims.heads // dims.kv_heads
    packed = q.reshape(1, dims.kv_heads, group, dims.head_dim)
    mask = torch.ones(1, 1, 1, context, dtype=torch.bool)
    ms = _alternate(
        {
            "no mask (grouped-query kernel)": lambda: F.scaled_dot_product_attention(
                q, k, v, enable_gqa=True
            ),
            "mask (heads packed per key/value head)": lambda: F.scaled_dot_product_attention(
                packed, k, v, attn_mask=mask
            ),
        },
        repeats,
    )
    return {"context": context, "ms_per_layer": ms}


def decode_matmuls(dims: TextDims, rows_list: list[int], repeats: int) -> list[dict]:
    dt = torch.bfloat16
    h, qd, kvd, inter = (
        dims.hidden,
        dims.heads * dims.head_dim,
        dims.kv_heads * dims.head_dim,
        dims.intermediate,
    )
    shapes = [(h, qd), (h, kvd), (qd, h), (h, inter), (inter, h), (h, dims.vocab)]
    out = []
    for rows in rows_list:
        for fan_in, fan_out in shapes:
            w = torch.randn(fan_out, fan_in, dtype=dt)
            x = torch.randn(rows, fan_in, dtype=dt)

            def run(pytorch_kernel: bool, x=x, w=w):
                with matvec_kernels(x.device, pytorch_kernel):  # off: PyTorch's default, oneDNN
                    F.linear(x, w)

            ms = _alternate({"onednn": lambda: run(False), "pytorch": lambda: run(True)}, repeats)
            gbs = {k: w.numel() * w.element_size() / (v * 1e-3) / 1e9 for k, v in ms.items()}
            out.append({"rows": rows, "in": fan_in, "out": fan_out, "ms": ms, "weights_gbs": gbs})
    return out


def vision_attention(heads: int, head_dim: int, patches: int, repeats: int) -> dict:
    q, k, v = (torch.randn(1, heads, patches, head_dim, dtype=torch.bfloat16) for _ in range(3))
    chunk = 1024
    ms = _alternate(
        {
            "bf16 sdpa": lambda: F.scaled_dot_product_attention(q, k, v),
            "fp32 sdpa": lambda: F.scaled_dot_product_attention(q.float(), k.float(), v.float()),
            f"bf16 sdpa, {chunk}-query chunks": lambda: torch.cat(
                [
                    F.scaled_dot_product_attention(q[:, :, i : i + chunk], k, v)
                    for i in range(0, patches, chunk)
                ],
                2,
            ),
        },
        repeats,
    )
    flops = 4 * heads * patches * patches * head_dim
    return {"patches": patches, "ms": ms, "gflops": {k: flops / (t * 1e-3) / 1e9 for k, t in ms.items()}}


def vision_compile(config, blocks: int, side: int, repeats: int) -> dict:
    from stamp.model.build import meta_model

    tower = type(meta_model(config).model.visual)  # the preset family's vision tower class
    vc = copy.deepcopy(config.vision_config)
    vc.depth = blocks
    vc._attn_implementation = "sdpa"
    torch.manual_seed(0)
    eager = tower._from_config(vc, dtype=torch.bfloat16).eval()
    compiled = copy.deepcopy(eager)
    for block in compiled.blocks:
        block.compile(dynamic=True)
    inputs = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
    px = torch.randn(side * side, inputs, dtype=torch.bfloat16)
    grid = torch.tensor([[1, side, side]])
    with torch.inference_mode():
        t0 = time.perf_counter()
        compiled(px, grid)
        first = time.perf_counter() - t0
        ms = _alternate({"eager": lambda: eager(px, grid), "compiled": lambda: compiled(px, grid)}, repeats)
    return {"blocks": blocks, "patches": side * side, "first_compiled_call_s": first, "ms": ms}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="qwen2-vl-2b", choices=list(PRESETS))
    p.add_argument("--context", type=int, default=1170, help="cached keys of the decode attention")
    p.add_argument("--patches", type=int, default=4096, help="vision patches (a square number; 896 px: 4096)")
    p.add_argument(
        "--compile-blocks", type=int, default=4, help="vision blocks in the compile comparison (0: skip)"
    )
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    config, _ = build_config(args.preset)
    dims = TextDims.from_config(config)
    vc = config.vision_config
    embed = getattr(vc, "embed_dim", None) or vc.hidden_size
    side = int(args.patches**0.5)
    with torch.inference_mode():
        doc = {
            "preset": args.preset,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "matmul_gflops_bf16": matmul_peak(
                torch.bfloat16, "cpu", [(2048, 2048, 2048)], repeats=3
            ).best_gflops,
            "bandwidth_gbs": memory_bandwidth("cpu").best_gbs,
            "decode_attention": decode_attention(dims, args.context, args.repeats * 4),
            "decode_matmuls": decode_matmuls(dims, [1, 2, 4, 8], args.repeats),
            "vision_attention": vision_attention(
                vc.num_heads, embed // vc.num_heads, side * side, args.repeats
            ),
        }
    if args.compile_blocks:
        doc["vision_compile"] = vision_compile(config, args.compile_blocks, side, args.repeats)
    _print(doc)
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


def _print(doc: dict) -> None:
    print(f"{doc['preset']}, {doc['threads']} threads, torch {doc['torch']}: bf16 matmul "
          f"{doc['matmul_gflops_bf16']:.0f} GFLOP/s, bandwidth {doc['bandwidth_gbs']:.1f} GB/s")  # fmt: skip
    da = doc["decode_attention"]
    print(f"\ndecode attention, 1 query over {da['context']} keys (ms per layer)")
    for k, v in da["ms_per_layer"].items():
        print(f"  {k:45s} {v:8.3f}")
    print("\ndecode matmuls: weights GB/s (oneDNN | PyTorch's own)")
    for r in doc["decode_matmuls"]:
        g = r["weights_gbs"]
        print(
            f"  rows {r['rows']:2d}  {r['in']:6d} -> {r['out']:6d}   {g['onednn']:6.1f} | {g['pytorch']:6.1f}"
        )
    va = doc["vision_attention"]
    print(f"\nvision attention over {va['patches']} patches (ms, GFLOP/s)")
    for k, v in va["ms"].items():
        print(f"  {k:45s} {v:8.1f}  {va['gflops'][k]:6.0f}")
    vc = doc.get("vision_compile")
    if vc:
        e, c = vc["ms"]["eager"], vc["ms"]["compiled"]
        print(f"\nvision tower, {vc['blocks']} blocks, {vc['patches']} patches: eager {e:.0f} ms, compiled {c:.0f} ms "
              f"({e / c:.2f}x), first compiled call {vc['first_compiled_call_s']:.1f} s")  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
