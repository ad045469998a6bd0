"""Analytic FLOP counts of the language model's passes, and the same-run matmul reference.

FLOPs of one decoder forward of Q new tokens whose attention spans K keys (cache + new), per layer,
with h = hidden size, n_h / n_kv = query / key-value heads, d = head dim, I = MLP width
(one multiply-add = 2 FLOPs):

    projections   2 Q h (n_h d)            q_proj
                + 2 * 2 Q h (n_kv d)       k_proj, v_proj
                + 2 Q (n_h d) h            o_proj
    attention     2 * 2 Q K n_h d          Q K^T and softmax(.) V, dense over all K keys
    MLP           3 * 2 Q h I              gate, up, down (SwiGLU)

plus the heads: lm_head 2 h V per row it is applied to, classifier 2 h per placeholder. Norms, RoPE,
softmax, bias additions and the residual adds are elementwise (O(Q h), under 1% here) and not counted.
The attention term counts every (query, key) pair of the dense masked kernel; in STAMP's mask pass
every placeholder really does attend to all K keys (history, `<|seg|>` and the whole block).

Passes (C = entries in the cache before `<|seg|>`: the image's N cells and the text after it; N =
placeholders):
    STAMP mask pass   one forward of `<|seg|>` and the N placeholders (Q = N + 1, K = C + N + 1),
                      lm_head on 1 row (the `<|seg|>`: the answer continues), classifier on N rows
                      (`stamp.inference.generation.decode_step`);
    no cache reuse    Q = K = C + N + 1, the classifier on N rows (`StampModel.stamp_forward`);
    autoregressive    N steps, step i: Q = 1, K = C + 1 + i, lm_head on 1 row.

`achieved FLOP/s` = analytic FLOPs / median time; `flops_fraction` = that / the best FLOP/s of a plain
`torch.mm` of the same dtype on the same device, measured in the same run (`matmul_peak`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from stamp.bench.timing import measure


@dataclass(frozen=True)
class TextDims:
    """The language model's sizes that the FLOP count needs."""

    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int

    @classmethod
    def from_model(cls, model) -> TextDims:
        return cls.from_config(model.config, vocab=model.lm_head.out_features)

    @classmethod
    def from_config(cls, config, vocab: int | None = None) -> TextDims:
        """The sizes of `config`'s language model (`vocab`: the lm_head's rows, default the config's)."""
        tc = config.get_text_config()
        head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
        return cls(
            hidden=tc.hidden_size,
            layers=tc.num_hidden_layers,
            heads=tc.num_attention_heads,
            kv_heads=tc.num_key_value_heads,
            head_dim=head_dim,
            intermediate=tc.intermediate_size,
            vocab=tc.vocab_size if vocab is None else vocab,
        )

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def forward_flops(dims: TextDims, queries: int, keys: int) -> int:
    """FLOPs of the decoder stack for `queries` new tokens attending over `keys` keys (no heads)."""
    h, q, k = dims.hidden, queries, keys
    qd, kvd = dims.heads * dims.head_dim, dims.kv_heads * dims.head_dim
    proj = 2 * q * h * qd + 2 * 2 * q * h * kvd + 2 * q * qd * h
    attn = 2 * 2 * q * k * qd
    mlp = 3 * 2 * q * h * dims.intermediate
    return dims.layers * (proj + attn + mlp)


def head_flops(dims: TextDims, lm_rows: int, classifier_rows: int) -> int:
    return 2 * dims.hidden * dims.vocab * lm_rows + 2 * dims.hidden * classifier_rows


def mask_pass_flops(dims: TextDims, n: int, context: int) -> int:
    """STAMP's mask pass: `<|seg|>` + N placeholders against a cache of `context` entries."""
    return forward_flops(dims, n + 1, context + n + 1) + head_flops(dims, 1, n)


def no_cache_flops(dims: TextDims, n: int, context: int) -> int:
    """The same mask computed by one forward over [cached tokens ; `<|seg|>` ; placeholders]."""
    total = context + n + 1
    return forward_flops(dims, total, total) + head_flops(dims, 0, n)


def autoregressive_flops(dims: TextDims, n: int, context: int) -> int:
    """N one-token decode steps after the cached tokens (the first feeds `<|seg|>`), lm_head on each."""
    steps = sum(forward_flops(dims, 1, context + 1 + i) for i in range(n))
    return steps + head_flops(dims, n, 0)


@dataclass
class MatmulPeak:
    """Best measured `torch.mm` throughput of one dtype on one device."""

    dtype: str
    best_gflops: float
    best_shape: tuple[int, int, int]
    by_shape: dict[str, float] = field(default_factory=dict)  # "MxKxN" -> GFLOP/s (median time)

    def to_dict(self) -> dict:
        return {
            "dtype": self.dtype,
            "best_gflops": self.best_gflops,
            "best_shape": list(self.best_shape),
            "by_shape": dict(self.by_shape),
        }


def matmul_peak(
    dtype: torch.dtype,
    device: torch.device | str,
    shapes: list[tuple[int, int, int]],
    repeats: int = 5,
) -> MatmulPeak:
    """Median GFLOP/s of (M, K) @ (K, N) for each shape; the best is the reference."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    by_shape: dict[str, float] = {}
    best = (0.0, shapes[0])
    for m, k, n in shapes:
        a = torch.randn(m, k, generator=gen).to(device, dtype)
        b = torch.randn(k, n, generator=gen).to(device, dtype)
        out = torch.empty(m, n, device=device, dtype=dtype)
        t = measure(lambda a=a, b=b, out=out: torch.mm(a, b, out=out), device=device, repeats=repeats)
        gflops = 2 * m * k * n / (t.median_ms * 1e-3) / 1e9
        by_shape[f"{m}x{k}x{n}"] = gflops
        if gflops > best[0]:
            best = (gflops, (m, k, n))
    return MatmulPeak(str(dtype).removeprefix("torch."), best[0], best[1], by_shape)


def pass_matmul_rate(
    dims: TextDims, queries: int, dtype: torch.dtype, device: torch.device | str, repeats: int = 5
) -> float:
    """GFLOP/s of one decoder layer's weight matmuls alone for `queries` rows (q, k, v, o, gate, up,
    down: the shapes of a forward of that many tokens), on random inputs: what the projections and MLP
    of such a forward reach on this machine without attention, norms or anything else."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    h, qd, kvd, inter = (
        dims.hidden,
        dims.heads * dims.head_dim,
        dims.kv_heads * dims.head_dim,
        dims.intermediate,
    )

    def rand(*shape):
        return (torch.randn(*shape, generator=gen) * 0.02).to(device, dtype)

    x, attn_out, act = rand(queries, h), rand(queries, qd), rand(queries, inter)
    weights = [(x, rand(qd, h)), (x, rand(kvd, h)), (x, rand(kvd, h)), (attn_out, rand(h, qd))]
    weights += [(x, rand(inter, h)), (x, rand(inter, h)), (act, rand(h, inter))]

    def layer():
        for a, w in weights:
            torch.nn.functional.linear(a, w)

    flops = sum(2 * a.shape[0] * w.shape[0] * w.shape[1] for a, w in weights)
    t = measure(layer, device=device, repeats=repeats)
    return flops / (t.median_ms * 1e-3) / 1e9
