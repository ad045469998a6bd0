"""Two-phase STAMP generation: autoregressive answer, one non-autoregressive pass per `<|seg|>`.

Phase 1 decodes the answer token by token with the KV cache. When the token fed back is `<|seg|>`,
phase 2 rides on that same step: the `<|seg|>` row is causal (it sees only the history and itself,
exactly as a plain decode step), the N placeholders see the history, the `<|seg|>` and each other
(hybrid mask), and their last hidden states go through the classifier. Afterwards the N placeholder
entries are cropped from the cache, so the answer continues from the unforked history and the
placeholders never enter the text stream. Rows of a batch that are not at a `<|seg|>` carry masked-out
placeholder slots in that step.

The step runs in one of two equivalent forms (`mask_pass_form`): ONE forward of [`<|seg|>` ;
placeholders] with a (Q, K) mask, or TWO forwards -- the `<|seg|>` as a plain decode step, then the
placeholders against the cache, which at batch 1 need no mask at all. One forward saves a whole
decoder pass (what dominates at small N on a CPU and at any N on an accelerator, where a pass is bound
by kernel launches); two forwards let the CPU run its unmasked attention kernel, which wins at large N.

Models with `mask_decoder: next_token` (the Text4Seg-style baseline of the experiments) instead decode
the mask after `<|seg|>` as N label tokens, one step each (`_label_decode`).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from stamp.model import cpu_attention
from stamp.model.attention import build_hybrid_attention_mask
from stamp.model.positions import placeholder_position_ids

MASK_PASS_ENV = "STAMP_MASK_PASS"
MASK_PASS_FORMS = ("auto", "one_forward", "two_forward", "per_row")
CPU_ONE_FORWARD_MAX_N = 256
"""On a CPU, `auto` takes one forward up to this many placeholders (docs/PERFORMANCE.md: the
one-forward pass was faster at N = 64 and 256 and slower at N = 1024 and 4096 on the bundled sizes)."""
CPU_HALF_ONE_FORWARD_MAX_N = 144
"""The same in bf16 / fp16, where the second forward runs the matmul attention of
`stamp.model.cpu_attention`: two forwards were faster from 196 placeholders on, one forward up to 100,
even at 144 (`stamp bench --preset synth --dtypes bf16 --n 64,100,144,196 --parts mask_pass`)."""


CPU_PER_ROW_MIN_GFLOP = 1.0
"""A padded batch's mask step goes row by row on a CPU when the padded forward would cost at least this
many GFLOP: per row, each row pays a forward's fixed overhead, which only pays off against real
arithmetic. On eight SynthRef scenes (`python benchmarks/bench_batch_forms.py`, fp32) the tiny test
model's padded steps (0.14 GFLOP by `stamp.bench.flops.forward_flops`) took 4 ms in one forward and 9 ms
per row; the bundled model's (13-30 GFLOP each) 559 ms in one forward and 232 ms per row."""


def mask_pass_form(
    device: torch.device | str,
    n: int,
    masked: bool,
    dtype: torch.dtype | None = None,
    rows: int = 1,
    padded_gflop: float | None = None,
) -> str:
    """ "one_forward", "two_forward" or "per_row": how a `<|seg|>` step with up to `n` placeholders runs.

    `masked`: whether the two-forward form would need attention masks anyway (padding, rows of a batch
    not at a `<|seg|>`, different grids, the causal ablation); then one forward is strictly less work
    than two. `dtype`: the model's compute dtype (half precision moves the CPU threshold). `rows`: the
    batch size; `padded_gflop`: the work of the padded one-forward step (None: assume it is large).
    STAMP_MASK_PASS=one_forward|two_forward|per_row forces a form; `auto` (default) takes
    - one forward on accelerators (bound by kernel launches, where one wide call wins);
    - per row on a CPU for a batch that would need masks, when the padded step is real arithmetic
      (`CPU_PER_ROW_MIN_GFLOP`): the `<|seg|>` tokens of all rows as one decode step, then each row at
      a `<|seg|>` alone, its placeholders against its own cache without the padding -- no mask, no
      padded placeholder slots, no work for rows not at a `<|seg|>` (compute-bound, a CPU gains
      nothing from the wide padded call);
    - otherwise one forward when masked or when n <= CPU_ONE_FORWARD_MAX_N (CPU_HALF_ONE_FORWARD_MAX_N
      in bf16 / fp16 with the CPU matmul attention on), and two forwards above.
    All forms give the same logits up to float rounding (tested).
    """
    choice = os.environ.get(MASK_PASS_ENV, "auto").strip().lower() or "auto"
    if choice not in MASK_PASS_FORMS:
        raise ValueError(f"{MASK_PASS_ENV} must be one of {MASK_PASS_FORMS}, got {choice!r}")
    if choice != "auto":
        return choice
    if torch.device(device).type != "cpu":
        return "one_forward"
    if masked:
        heavy = padded_gflop is None or padded_gflop >= CPU_PER_ROW_MIN_GFLOP
        return "per_row" if rows > 1 and heavy else "one_forward"
    half = dtype in cpu_attention.HALF and cpu_attention.mode() != "sdpa"
    return (
        "one_forward"
        if n <= (CPU_HALF_ONE_FORWARD_MAX_N if half else CPU_ONE_FORWARD_MAX_N)
        else "two_forward"
    )


@dataclass
class GenerationConfig:
    """Decoding settings."""

    max_new_tokens: int = 128
    """Upper bound on generated answer tokens (after any forced prefix)."""
    do_sample: bool = False
    """Greedy decoding when False."""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    """Seed of the sampling generator (sampling is reproducible given a seed)."""
    predict_masks: bool = True
    """Run the mask pass at each `<|seg|>`; False gives the text alone (used to show isolation)."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be >= 0, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not (0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class GenerationRequest:
    """One conversation to continue: prompt ids (ending with the assistant header), its image's
    merged features (N, H) and grid, and optionally forced answer ids (teacher-forced prefix)."""

    input_ids: list[int]
    features: torch.Tensor
    grid_thw: torch.Tensor
    forced_ids: list[int] = field(default_factory=list)
    max_new_tokens: int | None = None
    """This row's own bound on free tokens after the forced prefix (None: the config's)."""


EventCallback = Callable[..., None]
"""`on_event(kind, row, *payload)`: ("token", row, token_id) when a row's answer gains a token,
("mask", row, k, logits) when the k-th mask of the row has been predicted ((gh, gw) float logits)."""


@dataclass
class GenerationOutput:
    token_ids: list[int]
    mask_logits: list[torch.Tensor]  # one (gh, gw) float tensor per `<|seg|>`
    timings: dict[str, float]


def _choose(logits: torch.Tensor, cfg: GenerationConfig, gen: torch.Generator | None) -> torch.Tensor:
    """(B, V) logits -> (B,) next tokens (greedy, or temperature / top-k / top-p sampling)."""
    if not cfg.do_sample:
        return logits.argmax(-1)
    logits = logits.float() / cfg.temperature
    if cfg.top_k > 0:
        kth = logits.topk(min(cfg.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if cfg.top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > cfg.top_p  # keep the smallest set reaching top_p
        logits = logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=gen).squeeze(-1)


class _Timer:
    def __init__(self, device: torch.device):
        self.device = device
        self.totals: dict[str, float] = {}

    def __call__(self, name: str):
        timer = self

        class _Ctx:
            def __enter__(self):
                if timer.device.type == "cuda":
                    torch.cuda.synchronize(timer.device)
                self.t0 = time.perf_counter()

            def __exit__(self, *exc):
                if timer.device.type == "cuda":
                    torch.cuda.synchronize(timer.device)
                timer.totals[name] = timer.totals.get(name, 0.0) + time.perf_counter() - self.t0

        return _Ctx()


@dataclass
class Prefill:
    """The prompt pass of a left-padded batch: what decoding continues from."""

    input_ids: torch.Tensor  # (B, L), left-padded with the pad id
    attention_mask: torch.Tensor  # (B, L), 1 on real tokens
    image_tokens: torch.Tensor  # (B, L) bool, the image placeholder tokens of the prompt
    positions: torch.Tensor  # (3, B, L) M-RoPE positions
    key_block: torch.Tensor  # (B, L) 0 on real tokens, -1 on padding (the hybrid mask's block ids)
    hidden: torch.Tensor  # (B, L, hidden) the language model's last hidden states
    cache: DynamicCache


@torch.no_grad()
def prefill(model, requests: list[GenerationRequest], pad_id: int) -> Prefill:
    """Run the language model over the requests' prompts (left-padded into one batch), filling a fresh
    KV cache. The image comes before any text and the prefix is causal, so the hidden states at the
    image tokens depend on the image and what precedes it only, not on the question."""
    device, bsz = model.device, len(requests)
    length = max(len(r.input_ids) for r in requests)
    input_ids = torch.full((bsz, length), pad_id, dtype=torch.long)
    attn = torch.zeros((bsz, length), dtype=torch.long)
    for b, r in enumerate(requests):
        input_ids[b, length - len(r.input_ids) :] = torch.tensor(r.input_ids)
        attn[b, length - len(r.input_ids) :] = 1
    input_ids, attn = input_ids.to(device), attn.to(device)
    mm = (input_ids == model.config.image_token_id).long() * attn
    grid_thw = torch.stack([r.grid_thw for r in requests]).to(device)
    embeds = model.embed_conversation(input_ids, [r.features for r in requests])
    positions = model.conversation_positions(input_ids, attn, mm, grid_thw)
    key_block = torch.where(attn.bool(), 0, -1)
    index = torch.arange(length, device=device).expand(bsz, -1)
    allowed = build_hybrid_attention_mask(key_block, key_block, index, index, model.stamp.attention_mode)
    cache = DynamicCache(config=model.config.get_text_config())
    hidden, cache = model.run_language_model(embeds, positions, allowed, cache)
    return Prefill(input_ids, attn, mm.bool(), positions, key_block, hidden, cache)


@torch.no_grad()
def generate(
    model,
    requests: list[GenerationRequest],
    cfg: GenerationConfig,
    pad_id: int,
    eos_ids: set[int],
    on_event: EventCallback | None = None,
) -> list[GenerationOutput]:
    """Run two-phase generation for a batch of requests (left-padded). See the module docstring.

    `on_event` (optional) is told about each answer token and each mask as soon as it exists (see
    `EventCallback`): a `<|seg|>` token's event always comes before the event of its mask.
    """
    device = model.device
    timer = _Timer(device)
    bsz = len(requests)
    seg_id = model.stamp.seg_token_id

    with timer("prefill"):
        pre = prefill(model, requests, pad_id)
        hidden, cache, key_block = pre.hidden, pre.cache, pre.key_block
        logits = model.lm_head(hidden[:, -1])
        next_pos = pre.positions[:, :, -1].max(0).values + 1  # (B,)

    merge = model.merge_size
    grids = [(int(r.grid_thw[1]) // merge, int(r.grid_thw[2]) // merge) for r in requests]
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed) if cfg.seed is not None else None
    tokens: list[list[int]] = [[] for _ in requests]
    masks: list[list[torch.Tensor]] = [[] for _ in requests]
    finished = [False] * bsz
    limits = [  # the forced prefix is extra
        len(r.forced_ids) + (cfg.max_new_tokens if r.max_new_tokens is None else r.max_new_tokens)
        for r in requests
    ]
    total = max(limits)
    for step in range(total):
        with timer("decode"):
            chosen = _choose(logits, cfg, gen).tolist()
        step_tokens, seg_rows = [], []
        for b, r in enumerate(requests):
            tok = r.forced_ids[step] if step < len(r.forced_ids) else chosen[b]
            finished[b] = finished[b] or step >= limits[b]
            if finished[b]:
                tok = pad_id
            elif tok in eos_ids:
                finished[b] = True
            else:
                tokens[b].append(tok)
                if on_event is not None:
                    on_event("token", b, tok)
                if tok == seg_id and cfg.predict_masks:
                    seg_rows.append(b)
            step_tokens.append(tok)
        if all(finished) or step == total - 1 and not seg_rows:
            break
        stage = "mask" if seg_rows else "decode"
        with timer(stage):
            live = torch.tensor([[-1 if done else 0] for done in finished], device=device)
            if model.stamp.mask_decoder == "next_token":  # the baseline: labels decoded one by one
                hidden, cache = _step(
                    model, cache, key_block, step_tokens, finished, [], requests, grids, next_pos
                )
                key_block, next_pos = torch.cat([key_block, live], dim=1), next_pos + 1
                if seg_rows:
                    hidden, cache, key_block, next_pos, scores = _label_decode(
                        model, cache, key_block, hidden, seg_rows, grids, next_pos
                    )
                    for b in seg_rows:
                        masks[b].append(scores[b].view(grids[b]).cpu())
                        if on_event is not None:
                            on_event("mask", b, len(masks[b]) - 1, masks[b][-1])
            else:
                seen = cache.get_seq_length()
                hidden, cache = _step(
                    model, cache, key_block, step_tokens, finished, seg_rows, requests, grids, next_pos
                )
                for b in seg_rows:
                    gh, gw = grids[b]
                    masks[b].append(model.classifier(hidden[b, 1 : 1 + gh * gw]).float().view(gh, gw).cpu())
                    if on_event is not None:
                        on_event("mask", b, len(masks[b]) - 1, masks[b][-1])
                extra = cache.get_seq_length() - (seen + 1)  # placeholder slots, in forms that cached them
                if extra:
                    cache.crop(-extra)
                key_block, next_pos = torch.cat([key_block, live], dim=1), next_pos + 1
            logits = model.lm_head(hidden[:, 0])
    return [GenerationOutput(tokens[b], masks[b], dict(timer.totals)) for b in range(bsz)]


def _step(model, cache, key_block, step_tokens, finished, seg_rows, requests, grids, next_pos):
    """Feed one token per row, and for the rows at `<|seg|>` their placeholder blocks, in the form
    `mask_pass_form` picks (module docstring).

    Returns (hidden (B, 1 + n_max, H): the token rows, then the placeholder slots; cache holding the
    history and the token, and in the one- and two-forward forms also the n_max placeholder slots,
    which the caller crops).
    """
    device = key_block.device
    bsz, hist = key_block.shape
    tok = torch.tensor(step_tokens, device=device).view(bsz, 1)
    embeds = model.get_input_embeddings()(tok)  # (B, 1, H)
    pos = next_pos.view(1, bsz, 1).expand(3, bsz, 1)
    new_block = torch.tensor([[-1 if done else 0] for done in finished], device=device)  # finished: padding
    keys = torch.cat([key_block, new_block], dim=1)
    mode = model.stamp.attention_mode
    form = None
    if seg_rows:
        ph, ph_pos, ph_block = _placeholder_inputs(model, bsz, seg_rows, requests, grids, next_pos, device)
        unmasked = mode == "hybrid" and bool((ph_block == 1).all()) and bool((keys == 0).all())
        padded_cpu = bsz > 1 and not unmasked and device.type == "cpu"
        work = _padded_gflop(model, bsz, ph.shape[1], hist) if padded_cpu else None
        form = mask_pass_form(
            device, ph.shape[1], masked=not unmasked, dtype=ph.dtype, rows=bsz, padded_gflop=work
        )
        if form == "one_forward":
            q_block = torch.cat([new_block, ph_block], dim=1)
            q_index = (hist + torch.arange(q_block.shape[1], device=device)).expand(bsz, -1)
            q_limit = torch.full(q_block.shape, hist, device=device)  # the token / the `<|seg|>`
            allowed = build_hybrid_attention_mask(
                torch.cat([key_block, q_block], dim=1), q_block, q_index, q_limit, mode
            )
            embeds = torch.cat([embeds, ph.to(embeds.dtype)], dim=1)
            return model.run_language_model(embeds, torch.cat([pos, ph_pos], dim=2), allowed, cache)
    if bool((keys == 0).all()):  # no padding anywhere: each token sees the whole cache and itself
        allowed = None
    else:
        here = torch.full((bsz, 1), hist, device=device)
        allowed = build_hybrid_attention_mask(keys, new_block, here, here, mode)
    hidden, cache = model.run_language_model(embeds, pos, allowed, cache)
    if form == "per_row":
        ph_hidden = torch.zeros((bsz, ph.shape[1], hidden.shape[2]), dtype=hidden.dtype, device=device)
        for b in seg_rows:
            row = _placeholder_pass_row(model, cache, b, keys[b], ph[b], ph_pos[:, b], ph_block[b])
            ph_hidden[b, : row.shape[0]] = row
        return torch.cat([hidden, ph_hidden], dim=1), cache
    if seg_rows:
        ph_hidden, cache = _placeholder_pass(model, cache, keys, ph, ph_pos, ph_block, unmasked)
        hidden = torch.cat([hidden, ph_hidden], dim=1)
    return hidden, cache


def _padded_gflop(model, bsz: int, n_max: int, hist: int) -> float:
    """GFLOP of the decoder stack for the padded one-forward mask step: bsz x (1 + n_max) queries."""
    from stamp.bench.flops import TextDims, forward_flops

    return forward_flops(TextDims.from_model(model), bsz * (1 + n_max), hist + 1 + n_max) / 1e9


def _placeholder_pass_row(model, cache, b, row_keys, ph, ph_pos, ph_block):
    """Row b's placeholders against row b's cache without its padding (the per-row form).

    row_keys (K,): block ids of the row's cache entries (its left padding -1, then its live history
    ending with its `<|seg|>`); ph (n_max, H), ph_pos (3, n_max), ph_block (n_max,): its slots (block 1
    live, then -1 padding). The row's cache is a copy of its live entries, so the batch's cache is left
    as it was. Returns the hidden states of its n live placeholders (n, H)."""
    start = int(torch.nonzero(row_keys == 0).flatten()[0])
    if not bool((row_keys[start:] == 0).all()):
        raise RuntimeError("a row at <|seg|> has padding inside its history")  # only left padding exists
    n = int((ph_block == 1).sum())
    row_cache = DynamicCache(
        ddp_cache_data=[
            (layer.keys[b : b + 1, :, start:], layer.values[b : b + 1, :, start:]) for layer in cache.layers
        ]
    )
    keys = torch.zeros((1, row_keys.shape[0] - start), dtype=row_keys.dtype, device=row_keys.device)
    block = ph_block[None, :n]
    unmasked = model.stamp.attention_mode == "hybrid"
    hidden, _ = _placeholder_pass(model, row_cache, keys, ph[None, :n], ph_pos[:, None, :n], block, unmasked)
    return hidden[0]


def _placeholder_inputs(model, bsz, seg_rows, requests, grids, next_pos, device):
    """E_mask (B, n_max, H), positions (3, B, n_max) and block ids (B, n_max) of the placeholder slots:
    block 1 for the rows at `<|seg|>` (placed after their `<|seg|>` at next_pos), -1 (padding) for the
    other rows and for slots past a row's own N."""
    sizes = {b: grids[b][0] * grids[b][1] for b in seg_rows}
    n_max = max(sizes.values())
    weight = model.get_input_embeddings().weight
    ph = torch.zeros((bsz, n_max, weight.shape[1]), dtype=weight.dtype, device=device)
    ph_pos = torch.zeros((3, bsz, n_max), dtype=torch.long, device=device)
    ph_block = torch.full((bsz, n_max), -1)
    for b, n in sizes.items():
        ph[b, :n] = model.mask_embeddings(requests[b].features.to(device)).to(ph.dtype)
        ph_pos[:, b, :n] = placeholder_position_ids(next_pos[b] + 1, grids[b], model.stamp.position_mode)
        ph_block[b, :n] = 1
    return ph, ph_pos, ph_block.to(device)


def _placeholder_pass(model, cache, keys, ph, ph_pos, ph_block, unmasked):
    """The second forward of the two-forward form: the placeholder slots against the cache, whose last
    key (index keys.shape[1] - 1) is each row's `<|seg|>`. `unmasked` (hybrid mode, every slot live, no
    padding): every placeholder sees the whole cache and its whole block, so no mask at all and the
    backend runs its unmasked kernel. Returns (hidden (B, n_max, H), cache)."""
    device = keys.device
    bsz, seen = keys.shape
    n_max = ph.shape[1]
    mode = model.stamp.attention_mode
    if unmasked:
        allowed = None
    else:
        q_index = (seen + torch.arange(n_max, device=device)).expand(bsz, -1)
        q_limit = torch.full((bsz, n_max), seen - 1, device=device)  # up to the `<|seg|>`
        allowed = build_hybrid_attention_mask(
            torch.cat([keys, ph_block], dim=1), ph_block, q_index, q_limit, mode
        )
    return model.run_language_model(ph, ph_pos, allowed, cache)


def _label_decode(model, cache, key_block, hidden, seg_rows, grids, next_pos):
    """The next-token baseline's mask (`mask_decoder: next_token`): for each row at `<|seg|>`, its N cell
    labels decoded greedily one token at a time with the KV cache, each restricted to the two label
    tokens; the labels stay in the cache (they are part of the answer, as in Text4Seg). Rows not at a
    `<|seg|>` (or past their own N) feed masked-out padding meanwhile.

    `hidden` (B, 1, H) is each row's last hidden state (the `<|seg|>`'s for the seg rows). Returns
    (hidden (B, 1, H) after the labels, cache, key_block, next_pos, {row: (N,) logit(fg) - logit(bg)}).
    """
    device = key_block.device
    bg, fg = model.stamp.label_token_ids
    bsz = key_block.shape[0]
    sizes = {b: grids[b][0] * grids[b][1] for b in seg_rows}
    scores: dict[int, list[torch.Tensor]] = {b: [] for b in seg_rows}
    embed = model.get_input_embeddings()
    h = hidden[:, :1]
    for t in range(max(sizes.values())):
        active = torch.zeros(bsz, dtype=torch.bool)
        for b in seg_rows:
            active[b] = t < sizes[b]
        pair = model.lm_head(h[:, 0])[:, [bg, fg]].float()
        diff = (pair[:, 1] - pair[:, 0]).cpu()
        for b in seg_rows:
            if active[b]:
                scores[b].append(diff[b])
        toks = torch.where(active & (diff > 0), fg, bg).view(bsz, 1).to(device)
        block = torch.where(active, 0, -1).view(bsz, 1).to(device)
        keys = torch.cat([key_block, block], dim=1)
        if bool((keys == 0).all()):
            allowed = None
        else:
            here = torch.full((bsz, 1), key_block.shape[1], device=device)
            allowed = build_hybrid_attention_mask(keys, block, here, here, model.stamp.attention_mode)
        pos = next_pos.view(1, bsz, 1).expand(3, bsz, 1)
        out, cache = model.run_language_model(embed(toks), pos, allowed, cache)
        act = active.to(device)
        h = torch.where(act.view(bsz, 1, 1), out, h)
        next_pos = next_pos + act.long()
        key_block = keys
    return h, cache, key_block, next_pos, {b: torch.stack(v) for b, v in scores.items()}
