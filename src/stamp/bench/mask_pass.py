"""The mask-pass benchmark: STAMP's mask pass against no cache reuse and autoregressive labels.

Every pass is the core's own function; the benchmark only chooses its inputs, so that the number of
placeholders N and the text after the image H are exact:
- the prompt is one image of (gh, gw) merged cells (N = gh * gw image tokens; N = 64 -> 8x8, 256 -> 16x16,
  1024 -> 32x32, 4096 -> 64x64) followed by H plain text tokens (random ids); its cell features are
  random (the cost does not depend on the values). `stamp.inference.generation.prefill` fills the KV
  cache with it once (untimed).

The three passes (each timed from the same state, leaving the cache as it found it):
1. `stamp`: `stamp.inference.generation.decode_step` -- the function generation calls at every answer
   token -- feeding `<|seg|>` with its N placeholders: one forward of [`<|seg|>` ; placeholders]
   against the cache with the hybrid mask, the classifier on the N rows, lm_head on the `<|seg|>` row,
   the placeholders cropped from the cache.
2. `no_cache`: the same mask by `StampModel.stamp_forward` (the training forward) over
   [prompt ; `<|seg|>` ; placeholders], nothing cached: the prompt is recomputed. The vision tower is
   not part of it: `encode_images` hands back the prompt's features for the duration (the request part
   times the vision tower). Its repeats alternate with those of `stamp`, so that load from other
   processes falls on both alike.
3. `autoregressive`: the Text4Seg-style baseline on the same backbone: N answer steps of one token each
   through the same `decode_step` (the first feeds `<|seg|>`, each later one the label chosen at the
   previous step; lm_head over the full vocabulary on every step, as a real model computes it; the
   label = argmax over two label-token ids): "one token per cell", not Text4Seg's own cost, which is
   neither above nor below it for sure: its semantic descriptors spend a label and a separator token
   per cell, and its row-wise run-length encoding shortens that sequence (by about 74% in its paper).
   With `ar_steps` set below N, only `ar_steps` steps are run at
   the start and `ar_steps` at the end (a cache N - ar_steps tokens longer, prefilled untimed), and the
   baseline is N x the mean of the two per-step times (a step's cost is linear in its cache length);
   the record says so (`autoregressive_scaled`) and gives both per-step times.
Passes 1 and 2 produce the same mask logits (checked: `max_abs_diff` of each record), so they do equal
work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from stamp.bench.flops import (
    TextDims,
    autoregressive_flops,
    mask_pass_flops,
    matmul_peak,
    no_cache_flops,
    pass_matmul_rate,
)
from stamp.bench.timing import Timing, measure, measure_alternating
from stamp.inference.generation import GenerationRequest, decode_step, prefill

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def grid_for(n: int) -> tuple[int, int]:
    """The most square (gh, gw) grid with gh * gw == n and gh <= gw."""
    if n < 1:
        raise ValueError(f"the number of placeholders must be >= 1, got {n}")
    gh = max(d for d in range(1, math.isqrt(n) + 1) if n % d == 0)
    return gh, n // gh


def plain_token_ids(model, tokenizer=None) -> torch.Tensor:
    """Vocabulary ids that are ordinary text (no special, added, image or STAMP tokens), ascending;
    `tokenizer` (the model's, when known) names its special and added tokens too."""
    vocab = model.get_input_embeddings().weight.shape[0]
    special = {model.stamp.seg_token_id, model.stamp.mask_token_id}
    for name in ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"):
        if getattr(model.config, name, None) is not None:
            special.add(int(getattr(model.config, name)))
    tok = tokenizer
    if tok is not None:
        special.update(int(i) for i in tok.all_special_ids)
        special.update(int(i) for i in tok.get_added_vocab().values())
    ids = [i for i in range(vocab) if i not in special]
    if len(ids) < 2:
        raise ValueError("the vocabulary has fewer than two ordinary tokens")
    return torch.tensor(ids)


def _crop_to(cache, length: int) -> None:
    """Drop every cache entry after the first `length` (a view of the kept part, no copy)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


class MaskPassBench:
    """One model, one text length after the image, one grid: the three passes of the module docstring."""

    def __init__(self, model, history: int, grid: tuple[int, int], *, seed: int = 0, tokenizer=None):
        if history < 1:
            raise ValueError(f"history must be >= 1 token, got {history}")
        self.model = model
        self.history = history
        self.grid = (int(grid[0]), int(grid[1]))
        self.n = self.grid[0] * self.grid[1]
        self.context = self.n + history
        """Cache entries before `<|seg|>`: the image's N tokens and the H text tokens."""
        self.device = model.device
        self.seg_id = model.stamp.seg_token_id
        gen = torch.Generator(device="cpu").manual_seed(seed)
        plain = plain_token_ids(model, tokenizer)
        self.pad_id = int(plain[0])
        self.label_ids = plain[:2].to(self.device)  # stand-ins for two label words: the cost is the same
        text = plain[torch.randint(0, len(plain), (history,), generator=gen)].tolist()
        prompt = [int(model.config.image_token_id)] * self.n + text
        embed = model.get_input_embeddings().weight
        feats = torch.randn(self.n, embed.shape[1], generator=gen) * embed.std().item()
        self.features = feats.to(self.device, embed.dtype)
        merge = model.merge_size
        grid_thw = torch.tensor([1, merge * self.grid[0], merge * self.grid[1]])
        self.request = GenerationRequest(prompt, self.features, grid_thw)
        pre = prefill(model, [self.request], self.pad_id)
        self.cache = pre.cache
        self.next_pos = pre.positions[:, :, -1].max(0).values + 1
        ids = torch.tensor([[*prompt, self.seg_id]], device=self.device)
        self.inputs = {  # stamp_forward's batch: [prompt ; <|seg|>], one sample
            "input_ids": ids,
            "attention_mask": torch.ones_like(ids),
            "mm_token_type_ids": (ids == model.config.image_token_id).long(),
            "image_features": [self.features],  # the prompt's cells: the vision tower is not rerun
            "image_grid_thw": grid_thw.view(1, 3).to(self.device),
        }
        grid_batch = self.inputs["image_grid_thw"]
        plan = model.plan_batch(
            ids, self.inputs["attention_mask"], self.inputs["mm_token_type_ids"], grid_batch
        )
        self.inputs["plan"] = plan.to(self.device)

    def _decode_step(self, cache, token: int, seg: bool):
        """`generation.decode_step` for the one row, whose cache holds `cache.get_seq_length()` tokens."""
        seen = cache.get_seq_length()
        key_block = torch.zeros((1, seen), dtype=torch.long, device=self.device)
        next_pos = self.next_pos + (seen - self.context)
        return decode_step(
            self.model,
            cache,
            key_block,
            next_pos,
            [token],
            [False],
            [0] if seg else [],
            [self.request],
            [self.grid],
        )

    @torch.no_grad()
    def stamp(self) -> torch.Tensor:
        """STAMP's mask pass on the cached prompt, as generation runs it: (gh, gw) mask logits."""
        _, masks, cache = self._decode_step(self.cache, self.seg_id, seg=True)
        _crop_to(cache, self.context)
        return masks[0]

    @torch.no_grad()
    def no_cache(self) -> torch.Tensor:
        """The same mask by `StampModel.stamp_forward`, nothing cached: (gh, gw) mask logits."""
        out = self.model.stamp_forward(**self.inputs)
        return out.mask_logits[0, : self.n].float().view(self.grid)

    @torch.no_grad()
    def autoregressive(self, steps: int | None = None, cache=None) -> list[int]:
        """`steps` (default N) one-token answer steps after the cached text (default: the prompt),
        starting with `<|seg|>`; returns the chosen labels. The cache is cropped back afterwards."""
        cache = self.cache if cache is None else cache
        start = cache.get_seq_length()
        steps = self.n if steps is None else steps
        token, labels = self.seg_id, []
        for _ in range(steps):
            logits, _, cache = self._decode_step(cache, token, seg=False)
            token = int(self.label_ids[logits[0, self.label_ids].argmax()])  # read back, as a decoder does
            labels.append(token)
        _crop_to(cache, start)
        return labels

    def end_cache(self, steps: int):
        """A cache of the prompt and N - `steps` labels: where the baseline's last `steps` steps start."""
        gen = torch.Generator(device="cpu").manual_seed(1)
        labels = self.label_ids.cpu()[torch.randint(0, 2, (self.n - steps,), generator=gen)].tolist()
        r = self.request
        return prefill(
            self.model, [GenerationRequest(r.input_ids + labels, r.features, r.grid_thw)], self.pad_id
        ).cache


def check_equal_work(bench: MaskPassBench) -> float:
    """Max |stamp - no_cache| over the mask logits."""
    return float((bench.stamp() - bench.no_cache()).abs().max())


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
    ar_steps: int | None = None
    """Run this many baseline steps at the start and at the end and scale to N (None: all N steps)."""
    matmul_shapes: list[tuple[int, int, int]] = field(
        default_factory=lambda: [(512, 512, 512), (1024, 1024, 1024), (2048, 2048, 2048)]
    )


def _ms(t: Timing) -> float:
    return round(t.median_ms, 4)


def _autoregressive(bench: MaskPassBench, s: MaskPassSettings) -> dict:
    """The baseline's time for N steps (measured whole, or scaled from `s.ar_steps` at each end)."""
    dev, n = bench.device, bench.n
    warm = lambda: bench.autoregressive(min(n, 16))  # noqa: E731
    common = dict(
        device=dev, repeats=s.ar_repeats, warmup=s.warmup, budget_s=s.ar_budget_s, track_memory=True
    )
    if s.ar_steps is None or s.ar_steps >= n:
        t = measure(bench.autoregressive, warmup_fn=warm, **common)
        return {"ms": t.median_ms, "timing": t, "scaled": False, "steps": n}
    k = s.ar_steps
    start = measure(lambda: bench.autoregressive(k), warmup_fn=warm, **common)
    end_cache = bench.end_cache(k)
    end = measure(lambda: bench.autoregressive(k, end_cache), **{**common, "warmup": 0})
    per_step = (start.median_ms + end.median_ms) / (2 * k)
    return {
        "ms": per_step * n,
        "timing": start,
        "scaled": True,
        "steps": k,
        "step_ms_start": start.median_ms / k,
        "step_ms_end": end.median_ms / k,
        "end_timing": end,
    }


def mask_pass_record(bench: MaskPassBench, s: MaskPassSettings, dtype: str, peak_gflops: float) -> dict:
    """Time the three passes for one (n, dtype); the JSON record of docs/PERFORMANCE.md."""
    diff = check_equal_work(bench)
    dev = bench.device
    both = {"stamp": bench.stamp, "no_cache": bench.no_cache}  # alternating: their ratio is what counts
    timed = measure_alternating(both, device=dev, repeats=s.repeats, warmup=s.warmup, track_memory=True)
    st, nc = timed["stamp"], timed["no_cache"]
    ar = _autoregressive(bench, s)
    dims = TextDims.from_model(bench.model)
    flops = mask_pass_flops(dims, bench.n, bench.context)
    achieved = flops / (st.median_ms * 1e-3) / 1e9
    shapes = pass_matmul_rate(dims, bench.n + 1, bench.model.dtype, dev, repeats=s.repeats)
    ar_peak = ar["timing"].peak_mem
    record = {
        "n": bench.n,
        "grid": list(bench.grid),
        "dtype": dtype,
        "history": bench.history,
        "cache_tokens": bench.context,
        "stamp_ms": _ms(st),
        "no_cache_ms": _ms(nc),
        "autoregressive_ms": round(ar["ms"], 4),
        "autoregressive_scaled": ar["scaled"],
        "autoregressive_steps_measured": ar["steps"],
        "ar_ratio": ar["ms"] / st.median_ms,
        "cache_ratio": nc.median_ms / st.median_ms,
        "flops_fraction": achieved / peak_gflops if peak_gflops > 0 else None,
        "peak_mem_mb": st.peak_mem.peak_mb if st.peak_mem else None,
        "mask_pass_gflop": flops / 1e9,
        "mask_pass_gflops": achieved,
        "matmul_gflops": peak_gflops,
        # the pass's own weight matmuls alone, same shapes: the rate no pass of these FLOPs beats here
        "pass_matmul_gflops": shapes,
        "pass_matmul_fraction": shapes / peak_gflops if peak_gflops > 0 else None,
        "no_cache_peak_mem_mb": nc.peak_mem.peak_mb if nc.peak_mem else None,
        "autoregressive_peak_mem_mb": ar_peak.peak_mb if ar_peak else None,
        "peak_mem_method": st.peak_mem.method if st.peak_mem else "unavailable",
        "ar_flops_ratio": autoregressive_flops(dims, bench.n, bench.context) / flops,
        # the ratio a pass at the same-run matmul FLOP/s would reach against this baseline
        "ar_ratio_bound": ar["ms"] / (flops / peak_gflops / 1e6) if peak_gflops > 0 else None,
        "cache_flops_ratio": no_cache_flops(dims, bench.n, bench.context) / flops,
        "max_abs_diff": diff,
        "timings": {
            "stamp": st.to_dict(),
            "no_cache": nc.to_dict(),
            "autoregressive": ar["timing"].to_dict(),
        },
    }
    if ar["scaled"]:
        record["autoregressive_step_ms_start"] = ar["step_ms_start"]
        record["autoregressive_step_ms_end"] = ar["step_ms_end"]
        record["timings"]["autoregressive_end"] = ar["end_timing"].to_dict()
    return record


def run_mask_pass(
    model, settings: MaskPassSettings, log=print, into: tuple[list, list] | None = None, processor=None
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
                tokenizer = processor.tokenizer if processor is not None else None
                bench = MaskPassBench(model, settings.history, grid_for(n), tokenizer=tokenizer)
                rec = mask_pass_record(bench, settings, name, ref.best_gflops)
                records.append(rec)
                log(
                    f"[mask pass] {name} N={n:5d} stamp {rec['stamp_ms']:.2f} ms, no cache "
                    f"{rec['no_cache_ms']:.2f} ms, autoregressive {rec['autoregressive_ms']:.1f} ms"
                    f"{' (scaled)' if rec['autoregressive_scaled'] else ''} "
                    f"(x{rec['ar_ratio']:.1f}, cache x{rec['cache_ratio']:.2f}, "
                    f"{100 * (rec['flops_fraction'] or 0):.0f}% of matmul)"
                )
    finally:
        model.to(original)
    return records, references
