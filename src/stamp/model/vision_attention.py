"""Vision-tower attention over several images in a few calls instead of one call per image (on accelerators).

transformers' Qwen2-VL / Qwen2.5-VL vision attention packs all images of a call into one sequence
delimited by `cu_seqlens`. Its sdpa path then attends image by image (window by window for Qwen2.5-VL):
64 images x 6 layers = 384 attention calls forward, as many backward, and on a GPU the launch overhead
of those small calls was ~40% of the host time of a training step (docs/PERFORMANCE.md). Only a
flash-attention implementation gets the sequence whole.

`packed_vision_attention` is an attention function with flash attention's varlen signature that
transformers' vision attention calls once per layer with the whole packed sequence. It groups the images
(windows) by length and runs ONE `scaled_dot_product_attention` per distinct length on a
(n_images, heads, length, head_dim) batch -- no padding, no mask, exactly the per-image computation --
when the images share sizes (at least `MIN_SEGMENTS_PER_LENGTH` per distinct length on average), and
one call per image otherwise, where grouping measured slower. It
is registered with transformers' `AttentionInterface` under a name containing "flash", which is how
transformers decides to hand over the packed sequence; STAMP switches the vision config to it only for
the duration of its own vision calls (`packed_vision`), so nothing is saved with it and other code
sees the model unchanged.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AttentionInterface

PACKED_NAME = "stamp_flash_packed_vision"
"""The registered name ("flash" makes transformers pass the packed sequence with its `cu_seqlens`)."""
ENV = "STAMP_VISION_ATTENTION"
""""auto" (default): packed on accelerators, transformers' own image-by-image loop on CPU (where the
gathers cost more than the calls they save: 0.92-0.94x with 16 images, benchmarks/bench_vision_attention.py);
"packed" or "per_image" force one."""
MODES = ("auto", "packed", "per_image")
MIN_SEGMENTS_PER_LENGTH = 4
"""Grouping pays when segments share lengths: below this many segments per distinct length on average,
the packed function attends segment by segment instead (as transformers' own loop does). On an H100,
64 images in bf16 autocast, forward + backward: 4 distinct sizes (16 per size) 2.10x faster grouped;
32 distinct sizes (2 per size) 0.86x (benchmarks/bench_vision_attention.py, docs/PERFORMANCE.md)."""


def packed_vision_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    scaling: float | None = None,
    dropout: float = 0.0,
    cu_seq_lens_q: torch.Tensor | None = None,
    cu_seq_lens_k: torch.Tensor | None = None,
    is_causal: bool = False,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """Bidirectional attention within each segment of a packed sequence.

    Args:
        query, key, value: (1, heads, T, head_dim), the segments concatenated along T.
        cu_seq_lens_q: (n + 1,) cumulative segment boundaries (the same for keys).
    Returns:
        ((1, T, heads, head_dim), None), as transformers' attention functions do.
    """
    if attention_mask is not None or is_causal or cu_seq_lens_q is None:
        raise ValueError("packed vision attention takes segment boundaries only (no mask, not causal)")
    if (
        cu_seq_lens_k is not None
        and cu_seq_lens_k is not cu_seq_lens_q
        and not torch.equal(cu_seq_lens_k, cu_seq_lens_q)
    ):
        raise ValueError("packed vision attention needs the same segments for queries and keys")
    _, heads, total, dim = query.shape
    bounds = [int(b) for b in cu_seq_lens_q.tolist()]  # (one sync; the per-image path syncs the same way)
    lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:])]
    if sum(lengths) != total:
        raise ValueError(f"segments cover {sum(lengths)} tokens, the sequence has {total}")
    p = dropout if module.training else 0.0
    q, k, v = (t[0] for t in (query, key, value))  # (heads, T, dim)
    if len(set(lengths)) == 1:  # every segment alike (one image, or images of one size): a view
        n, length = len(lengths), lengths[0]
        q, k, v = (t.view(heads, n, length, dim).transpose(0, 1) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=p, scale=scaling)
        return out.transpose(1, 2).reshape(1, total, heads, dim), None
    if len(lengths) < MIN_SEGMENTS_PER_LENGTH * len(set(lengths)):  # few alike: one call per segment
        outs = [
            F.scaled_dot_product_attention(
                *(t[:, a:b].unsqueeze(0) for t in (q, k, v)), dropout_p=p, scale=scaling
            )[0]
            for a, b in zip(bounds[:-1], bounds[1:])
        ]
        return torch.cat(outs, dim=1).transpose(0, 1).unsqueeze(0), None
    plan = _group_plan(tuple(bounds), query.device)
    outs = []
    for n, length, idx in plan.groups:
        qg, kg, vg = (t.index_select(1, idx).view(heads, n, length, dim).transpose(0, 1) for t in (q, k, v))
        o = F.scaled_dot_product_attention(qg, kg, vg, dropout_p=p, scale=scaling)  # (n, heads, L, dim)
        outs.append(o.transpose(1, 2).reshape(n * length, heads, dim))
    out = torch.cat(outs).index_select(0, plan.inverse)
    return out.unsqueeze(0), None


class _GroupPlan(NamedTuple):
    groups: list[tuple[int, int, torch.Tensor]]  # (n segments, their length, their token positions)
    inverse: torch.Tensor  # position of each token in the group-by-group order


@functools.lru_cache(maxsize=8)
def _group_plan(bounds: tuple[int, ...], device: torch.device) -> _GroupPlan:
    """The gather indices that group the segments by length, built once per distinct packing.

    Every layer of a vision call sees the same boundaries (Qwen2.5-VL: two patterns, windows and whole
    images), so the indices are made once, with numpy, and sent to the device in one copy -- building
    them per layer in Python cost more than the attention calls they save (GPU, 40k tokens)."""
    starts = np.asarray(bounds[:-1], dtype=np.int64)
    lengths = np.diff(np.asarray(bounds, dtype=np.int64))
    parts, shapes = [], []
    for length in dict.fromkeys(lengths.tolist()):  # distinct lengths, in order of first appearance
        s = starts[lengths == length]
        parts.append((s[:, None] + np.arange(length)[None, :]).ravel())
        shapes.append((len(s), length))
    order = np.concatenate(parts)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    flat = torch.from_numpy(np.concatenate([order, inverse])).to(device)
    idx, offset = [], 0
    for (n, length), part in zip(shapes, parts):
        idx.append((n, length, flat[offset : offset + len(part)]))
        offset += len(part)
    return _GroupPlan(idx, flat[len(order) :])


AttentionInterface.register(PACKED_NAME, packed_vision_attention)


def use_packed(device: torch.device | str) -> bool:
    """Whether the vision tower attends packed on `device`, per STAMP_VISION_ATTENTION."""
    mode = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"{ENV} must be one of {MODES}, got {mode!r}")
    return mode == "packed" or (mode == "auto" and torch.device(device).type != "cpu")


@contextlib.contextmanager
def packed_vision(model, device: torch.device | str = "cpu") -> Iterator[None]:
    """Within the block, the vision tower of `model` (a StampModel) attends with
    `packed_vision_attention` when `use_packed(device)` -- unless its vision config asks for
    something other than sdpa."""
    vision = getattr(model.config, "vision_config", None)
    current = getattr(vision, "_attn_implementation", None)
    if vision is None or current != "sdpa" or not use_packed(device):
        yield
        return
    vision._attn_implementation = PACKED_NAME
    try:
        yield
    finally:
        vision._attn_implementation = current
