"""Each stage of a request against its bound: the least time its work can take at this run's own rates.

A stage's work is counted analytically; its bound is that work at a rate measured in the same process,
on the same device, in the same dtype:

    vision    FLOPs of the vision tower for the image's P patches (`vision_flops`) / matmul rate
    prefill   FLOPs of the prompt pass over its L tokens, image cells + text (`prefill_flops`) / matmul rate
    decode    per decoded token, the bytes of the weights it must read (decoder layers, final norm,
              lm_head; the embedding lookup reads one row) + its KV cache (`decode_bytes`) / bandwidth,
              or its FLOPs / matmul rate where that is longer (it never is at batch 1)
    mask      FLOPs of STAMP's mask pass (`stamp.bench.flops.mask_pass_flops`) / matmul rate

`share` = bound ms / measured ms: 1 is a stage at its bound; a share above 1 means the reference rate
was beaten (the reference shape was not the device's best). The matmul rate is the best `torch.mm`
GFLOP/s of `stamp.bench.flops.matmul_peak`; the bandwidth is the best of a large tensor's copy
(bytes read + written) and its sum (bytes read), `memory_bandwidth`.

Vision FLOPs (one multiply-add = 2 FLOPs), with d = embed dim, I = MLP width, P patches (P = merge^2 x
cells), c = channels x temporal x patch^2 inputs per patch, D = the language model's hidden size:

    patch embed   2 P c d                                (a Conv3d whose stride is its kernel)
    per block     2 P d 3d + 2 P d d                     qkv, proj
                + 2 P d I x 2 (Qwen2-VL: fc1, fc2) or x 3 (Qwen2.5-VL: gate, up, down)
                + 2 x 2 S d, S = sum over attention groups of (patches in the group)^2:
                  P^2 for full attention; Qwen2.5-VL's windowed blocks (all but `fullatt_block_indexes`)
                  attend within windows of `window_size` pixels, the last row and column of windows cut
                  at the image's edge
    merger        2 (P / merge^2) (merge^2 d)^2 + 2 (P / merge^2) (merge^2 d) D

Norms, rotary embeddings, activations and softmax are elementwise and not counted (as in flops.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stamp.bench.flops import TextDims, forward_flops, head_flops, mask_pass_flops
from stamp.bench.timing import measure

STAGE_NAMES = ("vision", "prefill", "decode", "mask")


@dataclass(frozen=True)
class VisionDims:
    """The vision tower's sizes that the FLOP count needs (Qwen2-VL and Qwen2.5-VL configs)."""

    patch_inputs: int
    embed: int
    depth: int
    mlp: int
    gated_mlp: bool
    merge: int
    out: int
    window_cells: int | None
    """Side of an attention window in merged cells (Qwen2.5-VL); None: every block attends fully."""
    full_blocks: tuple[int, ...] = ()

    @classmethod
    def from_config(cls, vc) -> VisionDims:
        patch_inputs = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
        if getattr(vc, "embed_dim", None):  # Qwen2-VL: embed_dim, mlp_ratio, hidden_size = output
            embed, mlp = vc.embed_dim, int(vc.embed_dim * vc.mlp_ratio)
            return cls(patch_inputs, embed, vc.depth, mlp, False, vc.spatial_merge_size, vc.hidden_size, None)
        window = vc.window_size // vc.spatial_merge_size // vc.patch_size
        return cls(
            patch_inputs,
            vc.hidden_size,
            vc.depth,
            vc.intermediate_size,
            True,
            vc.spatial_merge_size,
            vc.out_hidden_size,
            window,
            tuple(vc.fullatt_block_indexes),
        )

    def to_dict(self) -> dict:
        return {**self.__dict__, "full_blocks": list(self.full_blocks)}


def _window_pairs(cells_h: int, cells_w: int, window: int, merge: int) -> int:
    """Sum over windows of (patches in the window)^2 for a grid of cells_h x cells_w merged cells."""

    def sides(n: int) -> list[int]:
        return [min(window, n - s) * merge for s in range(0, n, window)]

    return sum((a * b) ** 2 for a in sides(cells_h) for b in sides(cells_w))


def vision_flops(dims: VisionDims, patches_h: int, patches_w: int, frames: int = 1) -> int:
    """FLOPs of the vision tower and merger for one image of patches_h x patches_w patches (module
    docstring)."""
    d, p = dims.embed, frames * patches_h * patches_w
    linear = 2 * p * d * 3 * d + 2 * p * d * d + (3 if dims.gated_mlp else 2) * 2 * p * d * dims.mlp
    full_pairs = p * p
    if dims.window_cells is None:
        window_pairs = full_pairs
    else:
        m = dims.merge
        window_pairs = frames * _window_pairs(patches_h // m, patches_w // m, dims.window_cells, m)
    attn = 0
    for block in range(dims.depth):
        full = dims.window_cells is None or block in dims.full_blocks
        attn += 2 * 2 * (full_pairs if full else window_pairs) * d
    merged, wide = p // dims.merge**2, dims.merge**2 * d
    merger = 2 * merged * wide * wide + 2 * merged * wide * dims.out
    return 2 * p * dims.patch_inputs * d + dims.depth * linear + attn + merger


def prefill_flops(dims: TextDims, length: int) -> int:
    """The prompt pass over `length` tokens with a causal mask (each query attends to itself and the
    keys before it: L (L + 1) / 2 pairs, what a causal kernel computes), lm_head on its last row."""
    no_attention = forward_flops(dims, length, 0)
    attention = dims.layers * 2 * 2 * (length * (length + 1) // 2) * dims.heads * dims.head_dim
    return no_attention + attention + head_flops(dims, 1, 0)


def decode_flops(dims: TextDims, steps: int, context: int) -> int:
    """`steps` one-token decode steps, the first after `context` cached entries, lm_head on each."""
    return sum(forward_flops(dims, 1, context + 1 + i) for i in range(steps)) + head_flops(dims, steps, 0)


def weight_bytes_per_token(model) -> int:
    """Bytes of the weights one decode step reads: the language model's parameters but its embedding
    table (one row is looked up), plus the lm_head (counted once if tied to the embedding)."""
    embed = model.get_input_embeddings().weight
    lm = model.model.language_model if hasattr(model.model, "language_model") else model.model
    total = sum(p.numel() * p.element_size() for p in lm.parameters() if p is not embed)
    head = model.lm_head.weight
    return total + head.numel() * head.element_size()


def decode_bytes(model, dims: TextDims, steps: int, context: int) -> int:
    """Bytes read by `steps` decode steps after `context` cached entries: the weights every step
    (`weight_bytes_per_token`) and the KV cache (K and V of every layer for every cached entry)."""
    itemsize = model.get_input_embeddings().weight.element_size()
    per_entry = 2 * dims.layers * dims.kv_heads * dims.head_dim * itemsize
    cache = sum(per_entry * (context + 1 + i) for i in range(steps))
    return steps * weight_bytes_per_token(model) + cache


@dataclass
class Bandwidth:
    """Best measured memory bandwidth of one device: a large tensor copied (read + write) and summed
    (read), in GB/s (1e9 bytes)."""

    best_gbs: float
    method: str
    by_method: dict[str, float]
    bytes: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def memory_bandwidth(device: torch.device | str, nbytes: int = 512 * 2**20, repeats: int = 5) -> Bandwidth:
    """GB/s of `copy_` (2 x nbytes moved) and `sum` (nbytes read) of an fp32 tensor of `nbytes`, far
    larger than any cache, at the median time; the higher of the two is the reference."""
    n = nbytes // 4
    src = torch.ones(n, device=device)
    dst = torch.empty_like(src)
    rates = {}
    t = measure(lambda: dst.copy_(src), device=device, repeats=repeats)
    rates["copy"] = 2 * n * 4 / (t.median_ms * 1e-3) / 1e9
    t = measure(lambda: src.sum(), device=device, repeats=repeats)
    rates["sum"] = n * 4 / (t.median_ms * 1e-3) / 1e9
    best = max(rates, key=rates.get)
    return Bandwidth(rates[best], best, rates, n * 4)


@dataclass
class StageWork:
    """The work of one request's stages (FLOPs per stage, the bytes decode reads) and the sizes it
    follows from."""

    vision_flops: int
    prefill_flops: int
    decode_flops: int
    decode_bytes: int
    mask_flops: int
    patches: int
    patches_h: int
    patches_w: int
    prompt_tokens: int
    decode_steps: int
    cells: int
    """Placeholders of the mask pass (0 without one)."""


def request_work(
    model, patches_hw: tuple[int, int], prompt_length: int, decode_steps: int, cells: int, masks: bool = True
) -> StageWork:
    """The analytic work of a request whose image has `patches_hw` patches, whose prompt pass runs over
    `prompt_length` tokens (image cells + text), followed by the forced `<|seg|>` (the mask pass over
    `cells` placeholders, when `masks`) and `decode_steps` one-token steps."""
    text = TextDims.from_model(model)
    vision = VisionDims.from_config(model.config.vision_config)
    context = prompt_length + 1  # the steps after the `<|seg|>`
    return StageWork(
        vision_flops=vision_flops(vision, *patches_hw),
        prefill_flops=prefill_flops(text, prompt_length),
        decode_flops=decode_flops(text, decode_steps, context),
        decode_bytes=decode_bytes(model, text, decode_steps, context),
        mask_flops=mask_pass_flops(text, cells, prompt_length) if masks else 0,
        patches=patches_hw[0] * patches_hw[1],
        patches_h=patches_hw[0],
        patches_w=patches_hw[1],
        prompt_tokens=prompt_length,
        decode_steps=decode_steps,
        cells=cells if masks else 0,
    )


def stage_bounds(
    ms: dict[str, float],
    work: dict[str, float],
    matmul_gflops: float,
    bandwidth_gbs: float,
    ceilings: dict[str, float] | None = None,
) -> dict:
    """Per stage {ms, gflop, gbyte, bound_ms, bound_by, share, ceiling_ms, share_of_ceiling} from
    measured `ms`, analytic `work` (keys `<stage>_flops`, `decode_bytes`) and the stages' own kernels
    timed alone (`ceilings`, `stamp.bench.ceilings`; None: not measured); share = bound_ms / ms,
    share_of_ceiling = ceiling_ms / ms (None when nothing was measured)."""
    out = {}
    for stage in STAGE_NAMES:
        flops = work[f"{stage}_flops"]
        nbytes = work["decode_bytes"] if stage == "decode" else None
        compute_ms = flops / (matmul_gflops * 1e9) * 1e3 if matmul_gflops > 0 else None
        memory_ms = nbytes / (bandwidth_gbs * 1e9) * 1e3 if nbytes is not None and bandwidth_gbs > 0 else None
        candidates = {k: v for k, v in (("matmul", compute_ms), ("bandwidth", memory_ms)) if v is not None}
        bound_by = max(candidates, key=candidates.get) if candidates else None
        bound = candidates.get(bound_by) if bound_by else None
        measured = ms.get(stage, 0.0)
        ceiling = (ceilings or {}).get(stage)
        out[stage] = {
            "ms": measured,
            "gflop": flops / 1e9,
            "gbyte": None if nbytes is None else nbytes / 1e9,
            "bound_ms": bound,
            "bound_by": bound_by,
            "share": bound / measured if bound is not None and measured > 0 else None,
            "ceiling_ms": ceiling,
            "share_of_ceiling": ceiling / measured if ceiling and measured > 0 else None,
        }
    return out
