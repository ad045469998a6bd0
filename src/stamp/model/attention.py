"""The hybrid attention mask of STAMP (the paper's A_hyb).

Every token of a sequence is tagged with a *block id*:
    -1  padding (never attended to)
     0  conversation text (and image tokens): causal among themselves, never see placeholders
     j  (j >= 1) the j-th placeholder block: sees the conversation up to and including its `<|seg|>`
        and, in `hybrid` mode, every placeholder of its own block (bidirectional); in `causal` mode
        (the paper's ablation) only the placeholders of its block at or before itself.
Blocks never see each other, so several `<|seg|>` of one sample are trained in one forward pass.

The same rule serves training (the whole sequence is the query) and cached inference (the queries are
the newly appended tokens, the keys are cache + new tokens): queries are described by their block id,
their own key index and the last conversation key index they may see ("limit").
"""

from __future__ import annotations

import contextlib

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

ATTENTION_MODES = ("hybrid", "causal")
SUPPORTED_ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


def build_hybrid_attention_mask(
    key_block: torch.Tensor,
    query_block: torch.Tensor,
    query_index: torch.Tensor,
    query_limit: torch.Tensor,
    mode: str = "hybrid",
    key_segment: torch.Tensor | None = None,
    query_segment: torch.Tensor | None = None,
) -> torch.Tensor:
    """Which keys each query may attend to.

    Args:
        key_block: (B, K) long, block id of every key (-1 pad, 0 text, j >= 1 placeholder block j).
        query_block: (B, Q) long, block id of every query.
        query_index: (B, Q) long, the key index of each query itself (queries are also keys).
        query_limit: (B, Q) long, the last *text* key index the query may see: its own index for text
            tokens, the index of its `<|seg|>` for placeholders.
        mode: "hybrid" (bidirectional placeholders) or "causal" (ablation).
        key_segment / query_segment: optional (B, K) / (B, Q) sample ids of packed rows: a query only
            sees keys of its own sample.

    Returns:
        (B, 1, Q, K) bool, True where attention is allowed. Every row allows at least the query itself,
        so no softmax row is empty (padding queries see only themselves).

    Example (one sample: 3 text tokens, `<|seg|>` at index 2, two placeholders of block 1):
        key_block   = [[0, 0, 0, 1, 1]]
        query_index = [[0, 1, 2, 3, 4]]; query_limit = [[0, 1, 2, 2, 2]]; query_block = key_block
        hybrid ->  [[1,0,0,0,0],
                    [1,1,0,0,0],
                    [1,1,1,0,0],
                    [1,1,1,1,1],
                    [1,1,1,1,1]]
    """
    if mode not in ATTENTION_MODES:
        raise ValueError(f"attention mode must be one of {ATTENTION_MODES}, got {mode!r}")
    k = key_block.shape[1]
    key_index = torch.arange(k, device=key_block.device).view(1, 1, k)  # (1, 1, K)
    kb = key_block.unsqueeze(1)  # (B, 1, K)
    qb = query_block.unsqueeze(2)  # (B, Q, 1)
    qi = query_index.unsqueeze(2)  # (B, Q, 1)
    sees_text = (kb == 0) & (key_index <= query_limit.unsqueeze(2))  # (B, Q, K)
    same_block = (qb >= 1) & (kb == qb)
    if mode == "causal":
        same_block = same_block & (key_index <= qi)
    allowed = (sees_text & (qb >= 0)) | same_block
    if key_segment is not None and query_segment is not None:
        allowed = allowed & (query_segment.unsqueeze(2) == key_segment.unsqueeze(1))
    allowed = allowed | (key_index == qi)  # a query always sees itself: no empty softmax row
    return allowed.unsqueeze(1)


def to_backend_mask(allowed: torch.Tensor, attn_implementation: str) -> torch.Tensor:
    """Convert a bool "allowed" mask to what the attention backend honours.

    sdpa takes the bool mask as is. eager ADDS the mask to the scores, so a bool mask would be silently
    wrong there: it gets an additive float32 mask (0 allowed, finfo.min elsewhere) instead.
    """
    if attn_implementation == "sdpa":
        return allowed
    if attn_implementation == "eager":
        additive = torch.zeros(allowed.shape, dtype=torch.float32, device=allowed.device)
        return additive.masked_fill_(~allowed, torch.finfo(torch.float32).min)
    raise ValueError(
        f"attention implementation {attn_implementation!r} cannot honour STAMP's hybrid mask; "
        f"use one of {SUPPORTED_ATTN_IMPLEMENTATIONS}"
    )


# Every sdpa backend but cuDNN, in PyTorch's own order of preference.
_NO_CUDNN = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def attention_backends(device: torch.device):
    """The sdpa backends STAMP runs with on `device` (a context manager).

    On CUDA, cuDNN attention is left out: PyTorch tries it first for bf16/fp16 on recent GPUs, and cuDNN
    builds a new execution plan for every new tensor shape, while STAMP's shapes change all the time
    (every decode step has one more cached key, every image size is a new vision sequence, every
    training batch a new row width). docs/PERFORMANCE.md gives the measurement. Elsewhere: unchanged.

    Example:
        >>> with attention_backends(torch.device("cpu")):
        ...     pass  # on the CPU every backend stays allowed
    """
    if device.type != "cuda":
        return contextlib.nullcontext()
    return sdpa_kernel(_NO_CUDNN)
