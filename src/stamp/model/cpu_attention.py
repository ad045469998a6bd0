"""Unmasked half-precision attention on CPU as plain matmuls, in row chunks.

On the project's CPUs (torch 2.13, AVX512-BF16), `scaled_dot_product_attention` in bf16 runs at about
the speed of fp32 (164 GFLOP/s at 1,025 queries x 1,537 keys) while a bf16 matmul runs 2-4x faster, so
STAMP's widest forward -- the placeholders against the cached history, with no mask at all -- was held
to a third of the bf16 matmul rate (docs/PERFORMANCE.md). Spelled out as two matmuls and a softmax over
chunks of query rows (scores of at most `CHUNK_ELEMENTS` per key/value head at a time, so they stay in
cache), the same attention took 5.8 ms instead of 9.9 ms at that size and 50 ms instead of 112 ms at
4,097 x 4,609; 2.9-3.3x faster with Qwen2-VL-2B's heads (benchmarks/bench_cpu_attention.py). The
grouped query heads share their key/value head by a reshape, without copying keys.

`matmul_attention` is registered with transformers' `AttentionInterface`; `cpu_matmul_attention`
switches a model's text attention to it for one call, and the function itself hands every call it does
not cover (a mask, causal, fewer than
`MIN_QUERIES` queries, fp32, gradients, another device, dropout) to transformers' sdpa function
unchanged. STAMP_CPU_ATTENTION=sdpa turns it off; =matmul also takes fp32 calls (slower there; for
comparison).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

NAME = "stamp_cpu_matmul"
ENV = "STAMP_CPU_ATTENTION"
MODES = ("auto", "sdpa", "matmul")
CHUNK_ELEMENTS = 1 << 19
"""Scores computed at once per key/value head (query rows x keys), 1 MiB in bf16. In a sweep of 2^17 to
2^24 on the 2-core CPU, 2^18-2^20 were fastest and one chunk for everything (2^24 at 4,097 queries)
was 2-3x slower; `python benchmarks/bench_cpu_attention.py --chunk N` measures another value."""
MIN_QUERIES = 16
"""Fewer queries (a decode step) stay with sdpa: the handful of extra ops cost more than they save there
(the autoregressive baseline of `stamp bench`, one query per step, ran 15-20% slower through matmuls)."""
HALF = (torch.bfloat16, torch.float16)


def mode() -> str:
    """The STAMP_CPU_ATTENTION setting ("auto" when unset)."""
    value = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if value not in MODES:
        raise ValueError(f"{ENV} must be one of {MODES}, got {value!r}")
    return value


def _covers(module, query, attention_mask, dropout, is_causal) -> bool:
    setting = mode()
    if setting == "sdpa" or attention_mask is not None or query.device.type != "cpu":
        return False
    if dropout and module.training:
        return False
    if query.requires_grad and torch.is_grad_enabled():
        return False  # training keeps sdpa's memory-lean backward
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
    if (causal and query.shape[2] > 1) or query.shape[2] < MIN_QUERIES:
        return False
    return query.dtype in HALF or setting == "matmul"


def matmul_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    scaling: float | None = None,
    dropout: float = 0.0,
    is_causal: bool | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Every query against every key (B, heads, Q, D) x (B, kv_heads, K, D); returns ((B, Q, heads, D),
    None) as transformers' attention functions do. Calls it does not cover go to sdpa (module docstring).
    """
    if not _covers(module, query, attention_mask, dropout, is_causal):
        return ALL_ATTENTION_FUNCTIONS["sdpa"](
            module,
            query,
            key,
            value,
            attention_mask,
            scaling=scaling,
            dropout=dropout,
            is_causal=is_causal,
            **kwargs,
        )
    bsz, heads, q_len, dim = query.shape
    kv_heads, k_len = key.shape[1], key.shape[2]
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads cannot share {kv_heads} key/value heads")
    groups = heads // kv_heads
    scale = dim**-0.5 if scaling is None else scaling
    # heads h*groups .. h*groups + groups - 1 use key/value head h: fold them into the rows
    q = (query * scale).reshape(bsz, kv_heads, groups * q_len, dim)
    keys_t = key.transpose(-1, -2)
    rows = max(1, CHUNK_ELEMENTS // k_len)
    out = torch.empty((bsz, kv_heads, groups * q_len, dim), dtype=query.dtype, device=query.device)
    for start in range(0, groups * q_len, rows):
        scores = torch.matmul(q[:, :, start : start + rows], keys_t)
        out[:, :, start : start + rows] = torch.matmul(torch.softmax(scores, dim=-1), value)
    return out.view(bsz, heads, q_len, dim).transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, matmul_attention)


@contextlib.contextmanager
def cpu_matmul_attention(text_config, device: torch.device | str) -> Iterator[None]:
    """Within the block, attention of the language model whose config is `text_config` goes through
    `matmul_attention` (which covers unmasked half-precision CPU calls and passes the rest to sdpa) --
    when the model uses sdpa, `device` is a CPU and STAMP_CPU_ATTENTION is not "sdpa"."""
    current = getattr(text_config, "_attn_implementation", None)
    if current != "sdpa" or torch.device(device).type != "cpu" or mode() == "sdpa":
        yield
        return
    text_config._attn_implementation = NAME
    try:
        yield
    finally:
        text_config._attn_implementation = current
