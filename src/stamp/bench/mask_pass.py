"""The mask-pass benchmark: STAMP's one-forward mask against no cache reuse and autoregressive labels.

Inputs are built on the model's own API, not through the chat loop, so the history length H and the
number of placeholders N are controlled exactly:
- a synthetic history of H text tokens (random ids, text positions 0..H-1) is prefilled once into a
  `DynamicCache` (untimed);
- N placeholders form a (gh, gw) grid (N = 64 -> 8x8, 256 -> 16x16, 1024 -> 32x32, 4096 -> 64x64); their
  merged "visual features" F_p are random (the cost does not depend on the values).

The three passes (each timed from the same state, leaving the cache as it found it):
1. `stamp`: what `stamp.inference.generation._step` does at a `<|seg|>` (batch 1), in the form
   `generation.mask_pass_form` picks for this device and N; both forms are timed:
   - `stamp_one_forward`: one forward of [`<|seg|>` ; placeholders] against the cache with the (Q, K)
     hybrid mask (`build_hybrid_attention_mask`);
   - `stamp_two_forward`: the `<|seg|>` step, then one decoder forward of the N placeholders (E_mask
     from `mask_embeddings`, positions from `placeholder_position_ids`) against the cache, which they
     see whole (hybrid mode: no mask needed);
   then the classifier on the N placeholder rows, lm_head on the `<|seg|>` row; the cache is cropped back.
2. `no_cache`: the same mask by one forward over [history ; `<|seg|>` ; placeholders] without a cache
   (what `StampModel.stamp_forward` does): the history is recomputed.
3. `autoregressive`: the Text4Seg-style baseline on the same backbone: N decode steps of one token each
   with the KV cache (the first feeds `<|seg|>`, each later one the label chosen at the previous step),
   lm_head on every step, the label = argmax over two label-token ids (the vocabulary projection is the
   full one, as a real model would compute it); then the cache is cropped back. Each step is a decode
   step of `generation._step` (batch 1, no padding: no mask), i.e. as fast as STAMP's own text decoding.
   Text4Seg really emits at least two tokens per cell (label and separator); one is a lower bound.
Passes 1 and 2 produce the same logits (checked: `max_abs_diff` of each record), so they do equal work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from stamp.bench.flops import (
    TextDims,
    autoregressive_flops,
    mask_pass_flops,
    matmul_peak,
    no_cache_flops,
)
from stamp.bench.timing import Timing, measure
from stamp.inference.generation import mask_pass_form
from stamp.model.attention import build_hybrid_attention_mask
from stamp.model.positions import placeholder_position_ids

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def grid_for(n: int) -> tuple[int, int]:
    """The most square (gh, gw) grid with gh * gw == n and gh <= gw."""
    if n < 1:
        raise ValueError(f"the number of placeholders must be >= 1, got {n}")
    gh = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return gh, n // gh


def plain_token_ids(model) -> torch.Tensor:
    """Vocabulary ids that are ordinary text (no special, added, image or STAMP tokens), ascending."""
    vocab = model.get_input_embeddings().weight.shape[0]
    special = {model.stamp.seg_token_id, model.stamp.mask_token_id}
    for name in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        if getattr(model.config, name, None) is not None:
            special.add(int(getattr(model.config, name)))
    tok = getattr(getattr(model, "processor", None), "tokenizer", None)
    if tok is not None:
        special.update(int(i) for i in tok.all_special_ids)
        special.update(int(i) for i in tok.get_added_vocab().values())
    ids = [i for i in range(vocab) if i not in special]
    if len(ids) < 2:
        raise ValueError("the vocabulary has fewer than two ordinary tokens")
    return torch.tensor(ids)


def _crop_to(cache: DynamicCache, length: int) -> None:
    """Drop every cache entry after the first `length` (a view of the kept part, no copy)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


class MaskPassBench:
    """One model, one history length, one grid: the three passes of the module docstring."""

    def __init__(self, model, history: int, grid: tuple[int, int], *, seed: int = 0):
        if history < 1:
            raise ValueError(f"history must be >= 1 token, got {history}")
        self.model = model
        self.history = history
        self.grid = (int(grid[0]), int(grid[1]))
        self.n = self.grid[0] * self.grid[1]
        self.device = model.device
        self.dtype = model.get_input_embeddings().weight.dtype
        self.mode = model.stamp.attention_mode
        self.seg_id = model.stamp.seg_token_id
        gen = torch.Generator(device="cpu").manual_seed(seed)
        plain = plain_token_ids(model)
        pick = torch.randint(0, len(plain), (1, history), generator=gen)
        self.history_ids = plain[pick].to(self.device)
        self.label_ids = plain[:2].to(self.device)  # stand-ins for two label words: the cost is the same
        hidden = model.config.get_text_config().hidden_size
        feats = torch.randn(self.n, hidden, generator=gen) * model.get_input_embeddings().weight.std().item()
        self.features = feats.to(self.device, self.dtype)
        attn = torch.ones_like(self.history_ids)
        self.history_pos = model.conversation_positions(self.history_ids, attn, None, None)
        self.cache = self._prefill()

    @torch.no_grad()
    def _prefill(self) -> DynamicCache:
        h = self.history
        index = torch.arange(h, device=self.device).view(1, h)
        text = torch.zeros_like(index)
        allowed = build_hybrid_attention_mask(text, text, index, index, self.mode)
        cache = DynamicCache(config=self.model.config.get_text_config())
        embeds = self.model.get_input_embeddings()(self.history_ids)
        _, cache = self.model.run_language_model(embeds, self.history_pos, allowed, cache)
        return cache

    def _placeholders(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, N, H) E_mask and (3, 1, N) positions of the block placed after `<|seg|>` at position H."""
        emb = self.model.mask_embeddings(self.features).unsqueeze(0)
        pos = placeholder_position_ids(self.history + 1, self.grid, self.model.stamp.position_mode)
        return emb, pos.to(self.device).unsqueeze(1)

    def _seg_step(self):
        """Feed `<|seg|>` at position H as a decode step (no padding: no mask). Returns its hidden row."""
        seg = self.model.get_input_embeddings()(torch.tensor([[self.seg_id]], device=self.device))
        pos = torch.full((3, 1, 1), self.history, device=self.device)
        hidden, _ = self.model.run_language_model(seg, pos, None, self.cache)
        return hidden

    @property
    def form(self) -> str:
        """The form of the mask pass that generation uses here ("one_forward" or "two_forward")."""
        return mask_pass_form(self.device, self.n, masked=self.mode != "hybrid", dtype=self.dtype)

    def stamp(self) -> tuple[torch.Tensor, torch.Tensor]:
        """STAMP's mask pass on the cached history, in generation's form. Returns ((gh, gw) mask
        logits, (V,) next-token logits of the `<|seg|>` row)."""
        return self.stamp_one_forward() if self.form == "one_forward" else self.stamp_two_forward()

    @torch.no_grad()
    def stamp_two_forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The pass as the `<|seg|>` decode step, then the placeholders against the cache."""
        m, h, n = self.model, self.history, self.n
        seg_hidden = self._seg_step()
        ph, ph_pos = self._placeholders()
        allowed = None  # hybrid: each placeholder sees the whole cache (history, `<|seg|>`) and its block
        if self.mode != "hybrid":
            keys = torch.ones((1, h + 1 + n), dtype=torch.long, device=self.device)
            keys[:, : h + 1] = 0
            q_index = (h + 1 + torch.arange(n, device=self.device)).view(1, -1)
            q_limit = torch.full((1, n), h, device=self.device)
            allowed = build_hybrid_attention_mask(keys, keys[:, h + 1 :], q_index, q_limit, self.mode)
        hidden, cache = m.run_language_model(ph, ph_pos, allowed, self.cache)
        logits = m.classifier(hidden[0]).float().view(self.grid)
        next_logits = m.lm_head(seg_hidden[:, 0])[0]
        _crop_to(cache, h)
        return logits, next_logits

    @torch.no_grad()
    def stamp_one_forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The same pass as ONE forward of [`<|seg|>` ; placeholders] with the (Q, K) hybrid mask."""
        m, h, n = self.model, self.history, self.n
        seg = m.get_input_embeddings()(torch.tensor([[self.seg_id]], device=self.device))
        ph, ph_pos = self._placeholders()
        embeds = torch.cat([seg, ph.to(seg.dtype)], dim=1)
        pos = torch.cat([torch.full((3, 1, 1), h, device=self.device), ph_pos], dim=2)
        new_block = torch.ones((1, n + 1), dtype=torch.long, device=self.device)
        new_block[:, 0] = 0
        key_block = torch.cat([torch.zeros((1, h), dtype=torch.long, device=self.device), new_block], 1)
        q_index = (h + torch.arange(n + 1, device=self.device)).view(1, -1)
        q_limit = torch.full((1, n + 1), h, device=self.device)
        allowed = build_hybrid_attention_mask(key_block, new_block, q_index, q_limit, self.mode)
        hidden, cache = m.run_language_model(embeds, pos, allowed, self.cache)
        logits = m.classifier(hidden[0, 1:]).float().view(self.grid)
        next_logits = m.lm_head(hidden[:, 0])[0]
        _crop_to(cache, h)
        return logits, next_logits

    @torch.no_grad()
    def no_cache(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The same mask by one forward over [history ; `<|seg|>` ; placeholders], nothing cached."""
        m, h, n = self.model, self.history, self.n
        ids = torch.cat([self.history_ids, torch.tensor([[self.seg_id]], device=self.device)], dim=1)
        ph, ph_pos = self._placeholders()
        text = m.get_input_embeddings()(ids)
        embeds = torch.cat([text, ph.to(text.dtype)], dim=1)
        seg_pos = torch.full((3, 1, 1), h, device=self.device)
        pos = torch.cat([self.history_pos, seg_pos, ph_pos], dim=2)
        total = h + 1 + n
        key_block = torch.zeros((1, total), dtype=torch.long, device=self.device)
        key_block[:, h + 1 :] = 1
        index = torch.arange(total, device=self.device).view(1, -1)
        limit = index.clamp_max(h)
        allowed = build_hybrid_attention_mask(key_block, key_block, index, limit, self.mode)
        hidden, _ = m.run_language_model(embeds, pos, allowed)
        logits = m.classifier(hidden[0, h + 1 :]).float().view(self.grid)
        next_logits = m.lm_head(hidden[:, h])[0]
        return logits, next_logits

    @torch.no_grad()
    def autoregressive(self, steps: int | None = None) -> list[int]:
        """`steps` (default N) one-token decode steps after the history; returns the chosen labels."""
        m, h = self.model, self.history
        steps = self.n if steps is None else steps
        embed = m.get_input_embeddings()
        token = torch.tensor([[self.seg_id]], device=self.device)
        labels: list[int] = []
        cache = self.cache
        for i in range(steps):
            pos = torch.full((3, 1, 1), h + i, device=self.device)
            hidden, cache = m.run_language_model(embed(token), pos, None, cache)  # no padding: no mask
            logits = m.lm_head(hidden[:, -1])
            label = self.label_ids[logits[0, self.label_ids].argmax()]
            labels.append(int(label))  # a real decoder reads each token back (stopping criteria, text)
            token = label.view(1, 1)
        _crop_to(cache, h)
        return labels


def check_equal_work(bench: MaskPassBench) -> float:
    """Max |x - no_cache| over the mask logits and the `<|seg|>` row's next-token logits, for x the
    STAMP pass in both its forms."""
    ref, ref_next = bench.no_cache()
    diff = 0.0
    for a, a_next in (bench.stamp_one_forward(), bench.stamp_two_forward()):
        diff = max(diff, float((a - ref).abs().max()), float((a_next.float() - ref_next.float()).abs().max()))
    return diff


@dataclass
class MaskPassSettings:
    """What the mask-pass benchmark measures and how often."""

    ns: list[int] = field(default_factory=lambda: [64, 256, 1024, 4096])
    dtypes: list[str] = field(default_factory=lambda: ["fp32", "bf16"])
    history: int = 512
    repeats: int = 5
    warmup: int = 1
    ar_repeats: int = 3
    ar_budget_s: float = 30.0
    """Stop repeating the autoregressive baseline after this many seconds (>= 1 run always)."""
    matmul_shapes: list[tuple[int, int, int]] = field(
        default_factory=lambda: [(512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048)]
    )


def _ms(t: Timing) -> float:
    return round(t.median_ms, 4)


def mask_pass_record(bench: MaskPassBench, s: MaskPassSettings, dtype: str, peak_gflops: float) -> dict:
    """Time the three passes for one (n, dtype); the JSON record of docs/PERFORMANCE.md."""
    diff = check_equal_work(bench)
    dev = bench.device
    form = bench.form
    one = measure(bench.stamp_one_forward, device=dev, repeats=s.repeats, warmup=s.warmup, track_memory=True)
    two = measure(bench.stamp_two_forward, device=dev, repeats=s.repeats, warmup=s.warmup, track_memory=True)
    st = one if form == "one_forward" else two  # what generation runs here
    nc = measure(bench.no_cache, device=dev, repeats=s.repeats, warmup=s.warmup, track_memory=True)
    ar = measure(
        bench.autoregressive,
        device=dev,
        repeats=s.ar_repeats,
        warmup=s.warmup,
        warmup_fn=lambda: bench.autoregressive(min(bench.n, 16)),
        budget_s=s.ar_budget_s,
        track_memory=True,
    )
    dims = TextDims.from_model(bench.model)
    flops = mask_pass_flops(dims, bench.n, bench.history)
    achieved = flops / (st.median_ms * 1e-3) / 1e9
    return {
        "n": bench.n,
        "grid": list(bench.grid),
        "dtype": dtype,
        "history": bench.history,
        "stamp_ms": _ms(st),
        "no_cache_ms": _ms(nc),
        "autoregressive_ms": _ms(ar),
        "ar_ratio": ar.median_ms / st.median_ms,
        "cache_ratio": nc.median_ms / st.median_ms,
        "flops_fraction": achieved / peak_gflops if peak_gflops > 0 else None,
        "peak_mem_mb": st.peak_mem.peak_mb if st.peak_mem else None,
        "stamp_form": form,
        "stamp_one_forward_ms": _ms(one),
        "stamp_two_forward_ms": _ms(two),
        "mask_pass_gflop": flops / 1e9,
        "mask_pass_gflops": achieved,
        "matmul_gflops": peak_gflops,
        "no_cache_peak_mem_mb": nc.peak_mem.peak_mb if nc.peak_mem else None,
        "autoregressive_peak_mem_mb": ar.peak_mem.peak_mb if ar.peak_mem else None,
        "peak_mem_method": st.peak_mem.method if st.peak_mem else "unavailable",
        "ar_flops_ratio": autoregressive_flops(dims, bench.n, bench.history) / flops,
        # the ratio a pass at the same-run matmul FLOP/s would reach against this baseline
        "ar_ratio_bound": ar.median_ms / (flops / peak_gflops / 1e6) if peak_gflops > 0 else None,
        "cache_flops_ratio": no_cache_flops(dims, bench.n, bench.history) / flops,
        "max_abs_diff": diff,
        "timings": {
            "stamp": st.to_dict(),
            "stamp_one_forward": one.to_dict(),
            "stamp_two_forward": two.to_dict(),
            "no_cache": nc.to_dict(),
            "autoregressive": ar.to_dict(),
        },
    }


def run_mask_pass(
    model, settings: MaskPassSettings, log=print, into: tuple[list, list] | None = None
) -> tuple[list[dict], list[dict]]:
    """All (n, dtype) records and the per-dtype matmul references. The model is cast to each dtype in
    turn (in place) and back to its original dtype at the end. `into=(records, references)`: lists to
    append to as each measurement finishes (the caller keeps them if the run is interrupted)."""
    original = model.get_input_embeddings().weight.dtype
    records, references = into if into is not None else ([], [])
    try:
        for name in settings.dtypes:
            if name not in DTYPES:
                raise ValueError(f"unknown dtype {name!r}; use {sorted(DTYPES)}")
            model.to(DTYPES[name])
            ref = matmul_peak(DTYPES[name], model.device, settings.matmul_shapes, repeats=settings.repeats)
            references.append(ref.to_dict())
            log(f"[mask pass] {name}: matmul reference {ref.best_gflops:.1f} GFLOP/s at {ref.best_shape}")
            for n in settings.ns:
                bench = MaskPassBench(model, settings.history, grid_for(n))
                rec = mask_pass_record(bench, settings, name, ref.best_gflops)
                records.append(rec)
                log(
                    f"[mask pass] {name} N={n:5d} stamp {rec['stamp_ms']:.2f} ms "
                    f"({rec['stamp_form'].replace('_', ' ')}; other form "
                    f"{rec['stamp_two_forward_ms' if rec['stamp_form'] == 'one_forward' else 'stamp_one_forward_ms']:.2f} ms), no cache "
                    f"{rec['no_cache_ms']:.2f} ms, autoregressive {rec['autoregressive_ms']:.1f} ms "
                    f"(x{rec['ar_ratio']:.1f}, cache x{rec['cache_ratio']:.2f}, "
                    f"{100 * (rec['flops_fraction'] or 0):.0f}% of matmul)"
                )
    finally:
        model.to(original)
    return records, references
