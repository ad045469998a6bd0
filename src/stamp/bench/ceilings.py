"""What each request stage's own kernels reach at the stage's own shapes, timed alone in the same run.

A stage's bound (`stamp.bench.stages`) is its work at the device's best matmul rate (or memory
bandwidth). Some stages cannot get there with the kernels PyTorch has for their shapes: on a CPU, sdpa
over the vision tower's thousands of patches with 80-dim heads runs well under the matmul rate. The
*ceiling* of a stage is its kernels alone -- one layer's weight matmuls (`F.linear`, with the kernels a
decode step picks) and its attention call, as transformers issues them, at the stage's shapes, on random
inputs, the least time of 5 calls -- times the depth, plus the patch embedding / merger (vision) or
lm_head (prefill, decode, mask): what the stage would take with nothing else (norms, rotary,
activations, Python, cache bookkeeping). share_of_ceiling = ceiling_ms / ms says how much of a stage's
time is outside its kernels; bound_ms / ceiling_ms how far the kernels themselves are from the
device's rates. A decode step's weights are small enough that one of them, read over and over, stays
partly in the CPU's caches, so decode's ceiling can come out under its bandwidth bound.

    vision   per block: qkv, proj, MLP (fc1 + fc2, or gate + up + down) on P rows; sdpa over the P
             patches (full blocks) or over each window (Qwen2.5-VL's windowed blocks, windows of one
             size batched); patch embedding and merger as linears
    prefill  per layer: q, k, v, o, gate, up, down on L rows; causal sdpa with grouped-query heads
    mask     per layer: the same on 1 + N rows; sdpa of the 1 + N queries over L + 1 + N keys with a
             bool mask (keys repeated to the query heads, as transformers does with a mask); lm_head on
             1 row, the classifier on N
    decode   per step: the same on 1 row; sdpa of each key/value head's queries over the context (a
             mask given: transformers' grouped-query packing); lm_head on 1 row
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F

from stamp.bench.flops import TextDims
from stamp.bench.stages import VisionDims
from stamp.bench.timing import measure
from stamp.inference.generation import matvec_kernels


class _Timer:
    """Median ms of kernels on random inputs of one dtype and device."""

    def __init__(self, dtype: torch.dtype, device, repeats: int):
        self.dtype, self.device, self.repeats = dtype, device, repeats
        self.gen = torch.Generator(device="cpu").manual_seed(0)

    def rand(self, *shape) -> torch.Tensor:
        return (torch.randn(*shape, generator=self.gen) * 0.5).to(self.device, self.dtype)

    def ms(self, fn) -> float:
        """The least time of `repeats` calls: a ceiling is what the kernel can do, and on a shared
        machine a median still carries the neighbours' load."""
        return measure(fn, device=self.device, repeats=self.repeats).min_ms

    def linears(self, rows: int, shapes: list[tuple[int, int]]) -> float:
        """ms of F.linear on `rows` rows for each (in, out) weight shape, summed, with the kernels a
        decode step picks for its rows (`stamp.inference.generation.matvec_kernels`)."""
        total = 0.0
        for fan_in, fan_out in shapes:
            x, w = self.rand(rows, fan_in), self.rand(fan_out, fan_in)

            def run(x=x, w=w):
                with matvec_kernels(x.device, rows == 1):
                    F.linear(x, w)

            total += self.ms(run)
        return total


def vision_ceiling(dims: VisionDims, heads: int, patches_hw: tuple[int, int], t: _Timer) -> float:
    """ms of the vision tower's kernels for one image of patches_hw patches (module docstring)."""
    p = patches_hw[0] * patches_hw[1]
    d, hd = dims.embed, dims.embed // heads
    mlp = [(d, dims.mlp)] * (2 if dims.gated_mlp else 1) + [(dims.mlp, d)]
    block_linears = t.linears(p, [(d, 3 * d), (d, d)] + mlp)

    def attention(count: int, length: int) -> float:
        q, k, v = (t.rand(count, heads, length, hd) for _ in range(3))
        return t.ms(lambda: F.scaled_dot_product_attention(q, k, v))

    full = attention(1, p)
    windowed = 0.0
    if dims.window_cells is not None:
        m, w = dims.merge, dims.window_cells
        sides_h = [min(w, patches_hw[0] // m - s) * m for s in range(0, patches_hw[0] // m, w)]
        sides_w = [min(w, patches_hw[1] // m - s) * m for s in range(0, patches_hw[1] // m, w)]
        sizes = Counter(a * b for a in sides_h for b in sides_w)
        windowed = sum(attention(count, size) for size, count in sizes.items())
    attn = sum(
        full if dims.window_cells is None or block in dims.full_blocks else windowed
        for block in range(dims.depth)
    )
    wide = dims.merge**2 * d
    edges = t.linears(p, [(dims.patch_inputs, d)]) + t.linears(
        p // dims.merge**2, [(wide, wide), (wide, dims.out)]
    )
    return dims.depth * block_linears + attn + edges


def _layer_linears(dims: TextDims) -> list[tuple[int, int]]:
    h, qd, kvd, i = dims.hidden, dims.heads * dims.head_dim, dims.kv_heads * dims.head_dim, dims.intermediate
    return [(h, qd), (h, kvd), (h, kvd), (qd, h), (h, i), (h, i), (i, h)]


def prefill_ceiling(dims: TextDims, length: int, t: _Timer) -> float:
    """ms of the prompt pass's kernels over `length` tokens, lm_head on the last row."""
    q = t.rand(1, dims.heads, length, dims.head_dim)
    k, v = (t.rand(1, dims.kv_heads, length, dims.head_dim) for _ in range(2))
    attn = t.ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
    return dims.layers * (t.linears(length, _layer_linears(dims)) + attn) + t.linears(
        1, [(dims.hidden, dims.vocab)]
    )


def mask_ceiling(dims: TextDims, cells: int, context: int, t: _Timer) -> float:
    """ms of the mask pass's kernels: 1 + `cells` queries over `context` + 1 + `cells` keys."""
    queries, keys = 1 + cells, context + 1 + cells
    q, k, v = (t.rand(1, dims.heads, n, dims.head_dim) for n in (queries, keys, keys))
    allowed = torch.ones(1, 1, queries, keys, dtype=torch.bool, device=t.device)
    attn = t.ms(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=allowed))
    heads = t.linears(1, [(dims.hidden, dims.vocab)]) + t.linears(
        cells, [(dims.hidden, 1)]
    )  # lm_head, classifier
    return dims.layers * (t.linears(queries, _layer_linears(dims)) + attn) + heads


def decode_ceiling(dims: TextDims, steps: int, context: int, t: _Timer) -> float:
    """ms of `steps` one-token steps' kernels, the first after `context` cached entries (the middle
    step's context stands for every step)."""
    if steps == 0:
        return 0.0
    keys = context + 1 + steps // 2
    group = dims.heads // dims.kv_heads
    q = t.rand(1, dims.kv_heads, group, dims.head_dim)
    k, v = (t.rand(1, dims.kv_heads, keys, dims.head_dim) for _ in range(2))
    allowed = torch.ones(1, 1, 1, keys, dtype=torch.bool, device=t.device)
    attn = t.ms(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=allowed))
    step = dims.layers * (t.linears(1, _layer_linears(dims)) + attn) + t.linears(
        1, [(dims.hidden, dims.vocab)]
    )
    return steps * step


def stage_ceilings(model, work, dtype: torch.dtype, repeats: int = 5) -> dict[str, float]:
    """Ceiling ms of each stage of a request (`stamp.bench.stages.StageWork` gives its sizes)."""
    t = _Timer(dtype, model.device, repeats)
    text = TextDims.from_model(model)
    vc = model.config.vision_config
    heads = vc.num_heads
    with torch.inference_mode():
        return {
            "vision": vision_ceiling(VisionDims.from_config(vc), heads, (work.patches_h, work.patches_w), t),
            "prefill": prefill_ceiling(text, work.prompt_tokens, t),
            "decode": decode_ceiling(text, work.decode_steps, work.prompt_tokens + 1, t),
            "mask": mask_ceiling(text, work.cells, work.prompt_tokens, t) if work.mask_flops else 0.0,
        }
