"""Unmasked attention on the CPU: sdpa against the row-chunked matmul attention of
`stamp.model.cpu_attention`, side by side in one run, on the shapes STAMP's inference meets.

    python benchmarks/bench_cpu_attention.py                 # bf16, 2 threads
    python benchmarks/bench_cpu_attention.py --dtype fp32
    python benchmarks/bench_cpu_attention.py --chunk 16777216   # another chunk size (scores per kv head)

Shapes (batch 1): the mask pass of the bundled sizes (4 query heads sharing 2 key/value heads, head
dim 64) and of Qwen2-VL-2B's language model (12 / 2, dim 128) with N placeholders against a history
of 512 + N keys, and single-image vision attention (bundled: 6 heads, dim 32; Qwen2-VL: 16, dim 80).
The two alternate within each repeat. Prints median milliseconds (min-max), GFLOP/s (4 * heads *
Q * K * dim per call), the ratio sdpa / matmul, and the largest difference from an fp32 reference
for each (the matmul path rounds scores to the dtype, as eager attention does).
"""

from __future__ import annotations

import argparse
import statistics
import time
import types

import torch
import torch.nn.functional as F
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from stamp.model import cpu_attention
from stamp.model.cpu_attention import matmul_attention

SHAPES = [  # (name, query heads, kv heads, queries, keys, head dim)
    *(("mask pass, bundled sizes", 4, 2, n + 1, 512 + n + 1, 64) for n in (256, 1024, 4096)),
    *(("mask pass, Qwen2-VL-2B LM", 12, 2, n + 1, 512 + n + 1, 128) for n in (256, 1024)),
    ("vision, bundled tower", 6, 6, 1024, 1024, 32),
    ("vision, Qwen2-VL tower", 16, 16, 1024, 1024, 80),
    ("vision, Qwen2-VL tower", 16, 16, 4096, 4096, 80),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument(
        "--chunk", type=int, default=None, help="scores per key/value head at a time (default: the module's)"
    )
    args = p.parse_args(argv)
    if args.chunk:
        cpu_attention.CHUNK_ELEMENTS = args.chunk
    torch.set_num_threads(args.threads)
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    if dtype == torch.float32:
        import os

        os.environ["STAMP_CPU_ATTENTION"] = "matmul"  # the matmul path takes fp32 only when asked
    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}, "
        f"chunk {cpu_attention.CHUNK_ELEMENTS} scores"
    )
    print(
        "| shape | heads / kv | Q x K | dim | sdpa ms | matmul ms | sdpa GFLOP/s | matmul GFLOP/s | sdpa/matmul | err sdpa | err matmul |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    for name, heads, kv, q_len, k_len, dim in SHAPES:
        module = types.SimpleNamespace(training=False, is_causal=False, num_key_value_groups=heads // kv)
        q = torch.randn(1, heads, q_len, dim, generator=gen).to(dtype)
        k, v = (torch.randn(1, kv, k_len, dim, generator=gen).to(dtype) for _ in range(2))
        kw = dict(scaling=dim**-0.5, is_causal=False)
        fns = {"sdpa": sdpa, "matmul": matmul_attention}
        times = {m: [] for m in fns}
        for _ in range(args.repeats + 1):  # the first round warms up
            for m, fn in fns.items():
                start = time.perf_counter()
                fn(module, q, k, v, None, **kw)
                times[m].append(time.perf_counter() - start)
        ref = F.scaled_dot_product_attention(
            q.float(),
            k.float().repeat_interleave(heads // kv, 1),
            v.float().repeat_interleave(heads // kv, 1),
            scale=dim**-0.5,
        ).transpose(1, 2)
        err = {
            m: (fn(module, q, k, v, None, **kw)[0].float() - ref).abs().max().item() for m, fn in fns.items()
        }
        ms = {m: 1e3 * statistics.median(t[1:]) for m, t in times.items()}
        span = {m: (1e3 * min(t[1:]), 1e3 * max(t[1:])) for m, t in times.items()}
        flop = 4 * heads * q_len * k_len * dim
        print(
            f"| {name} | {heads} / {kv} | {q_len} x {k_len} | {dim} "
            + "".join(f"| {ms[m]:.2f} [{span[m][0]:.2f}-{span[m][1]:.2f}] " for m in fns)
            + "".join(f"| {flop / ms[m] / 1e6:.0f} " for m in fns)
            + f"| {ms['sdpa'] / ms['matmul']:.2f} | {err['sdpa']:.4f} | {err['matmul']:.4f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
