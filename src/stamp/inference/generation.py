"""Two-phase STAMP generation: autoregressive answer, one non-autoregressive pass per `<|seg|>`.

Phase 1 decodes the answer token by token with the KV cache. When the token fed back is `<|seg|>`,
phase 2 rides on that same step (`decode_step`): ONE forward of [`<|seg|>` ; placeholders] against the
cache, with a (Q, K) hybrid mask -- the `<|seg|>` row is causal (it sees only the history and itself,
exactly as a plain decode step), the N placeholders see the history, the `<|seg|>` and each other -- and
their last hidden states go through the classifier. Afterwards the N placeholder entries are cropped
from the cache, so the answer continues from the unforked history and the placeholders never enter the
text stream. Rows of a batch that are not at a `<|seg|>` carry masked-out placeholder slots in that step.
Each mask equals the one the reference forward (`stamp.model.reference`) computes without any cache.

Each answer ends for one reason (`GenerationOutput.finish_reason`): "eos" (the model ended its turn),
"length" (the token budget ran out) or "repetition" (a degenerate loop, `repeating_period`, stopped by
default: `GenerationConfig.repetition_stop`).

The prompt pass (`prefill`) keeps memory linear in the prompt length: without padding it hands sdpa no
mask at all (its causal kernel), and otherwise it runs the prompt in chunks of `PREFILL_CHUNK` queries,
each with a (B, 1, C, K) mask, never an L x L one.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from stamp.inference.options import GenerationConfig
from stamp.model.attention import build_hybrid_attention_mask
from stamp.model.positions import placeholder_position_ids

FINISH_REASONS = ("eos", "length", "repetition")
"""Why an answer ended: the model's end-of-turn token, the token budget, or a degenerate loop."""

REPEAT_MAX_PERIOD = 16
REPEAT_MIN_TOKENS = 32
REPEAT_MIN_COUNT = 4
"""The repetition rule (`repeating_period`): the answer ends in one n-gram, 1 <= n <= 16 tokens, repeated
back to back at least max(4, ceil(32 / n)) times -- a run of at least 32 tokens and 4 copies (32 equal
tokens in a row, 11 copies of a 3-gram, 4 of a 16-gram)."""

PREFILL_CHUNK = 512
"""Query tokens per forward of a prompt pass that needs an explicit mask (a left-padded batch, or an
attention backend other than sdpa): its mask is (B, 1, C, K), at most B x 512 x L."""


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
    repetition_stop: bool | None = None
    """This row's own `GenerationConfig.repetition_stop` (None: the config's)."""
    prompt_cache: PromptCache | None = None
    """The KV cache of an earlier prompt pass on the same image features, whose common prefix with this
    prompt is not recomputed (used when the batch has this one row; updated by the pass)."""


@dataclass
class PromptCache:
    """The KV cache of the last prompt pass on one image's features, so that the next prompt on them
    (a follow-up question, another question) recomputes only its tokens after the longest common
    prefix: the keys and values of a causal prefix do not depend on what follows it. Owned by
    `StampPredictor` for its current image; `prefill` reads and refreshes it."""

    features: torch.Tensor | None = None
    """The image features the cached prompt was embedded with (identity checked before any reuse)."""
    ids: list[int] = field(default_factory=list)
    cache: DynamicCache | None = None

    def reusable(self, ids: list[int], features: torch.Tensor) -> int:
        """How many leading tokens of `ids` (on `features`) can take their entries from here: the
        common prefix, short of the last token (whose hidden state starts the answer)."""
        if self.cache is None or features is not self.features:
            return 0
        n, limit = 0, min(len(self.ids), len(ids) - 1)
        while n < limit and self.ids[n] == ids[n]:
            n += 1
        return n


EventCallback = Callable[..., None]
"""`on_event(kind, row, *payload)`: ("token", row, token_id) when a row's answer gains a token,
("mask", row, k, logits) when the k-th mask of the row has been predicted ((gh, gw) float logits)."""


@dataclass
class GenerationOutput:
    token_ids: list[int]
    mask_logits: list[torch.Tensor]  # one (gh, gw) float tensor per `<|seg|>`
    timings: dict[str, float]
    finish_reason: str = "eos"
    """One of `FINISH_REASONS`."""


def repeating_period(
    tokens: Sequence[int],
    max_period: int = REPEAT_MAX_PERIOD,
    min_tokens: int = REPEAT_MIN_TOKENS,
    min_count: int = REPEAT_MIN_COUNT,
) -> int:
    """The period n of a degenerate loop at the end of `tokens`, 0 if there is none.

    A loop: the last n * k tokens are one n-gram repeated k times back to back, for some
    1 <= n <= `max_period` with k = max(`min_count`, ceil(`min_tokens` / n)). E.g. with the defaults
    "No blue blue blue ..." trips once " blue" (n tokens) has been repeated to a run of 32 tokens; an
    answer naming the same object twice, or a list of a few `<|seg|>`, does not.
    """
    size = len(tokens)
    for n in range(1, max_period + 1):
        span = n * max(min_count, -(-min_tokens // n))
        if span > size:
            continue
        tail = list(tokens[size - span :])
        if tail[n:] == tail[:-n]:
            return n
    return 0


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
    hidden: torch.Tensor  # (B, L - reused, hidden) last hidden states of the tokens computed
    cache: DynamicCache
    reused: int = 0  # leading tokens whose cache entries came from a `PromptCache`


@torch.no_grad()
def prefill(model, requests: list[GenerationRequest], pad_id: int, chunk: int = PREFILL_CHUNK) -> Prefill:
    """Run the language model over the requests' prompts (left-padded into one batch), filling a fresh
    KV cache. The image comes before any text and the prefix is causal, so the hidden states at the
    image tokens depend on the image and what precedes it only, not on the question. A single request
    with a `prompt_cache` starts from the entries of its common prefix with the previous prompt on the
    same image features (a follow-up question recomputes its new text only) and leaves its own there.

    Memory is linear in the prompt length L: rows of one length on sdpa get no mask at all (sdpa's
    causal kernel); otherwise the prompt runs `chunk` queries at a time against the growing cache, each
    forward with a (B, 1, chunk, K <= L) mask.
    """
    device, bsz = model.device, len(requests)
    length = max(len(r.input_ids) for r in requests)
    padded = any(len(r.input_ids) != length for r in requests)
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
    text_config = model.config.get_text_config()
    kept = requests[0].prompt_cache if bsz == 1 else None
    reused = kept.reusable(requests[0].input_ids, requests[0].features) if kept is not None else 0
    if reused:
        cache = fork_cache(kept.cache, reused, text_config)
    else:
        cache = DynamicCache(config=text_config)
    if not reused and not padded and model.attn_implementation == "sdpa":
        hidden, cache = model.run_causal_language_model(embeds, positions, cache)
    else:
        index = torch.arange(length, device=device).expand(bsz, -1)
        parts = []
        for start in range(reused, length, chunk):
            q = slice(start, min(start + chunk, length))
            allowed = build_hybrid_attention_mask(
                key_block[:, : q.stop], key_block[:, q], index[:, q], index[:, q], model.stamp.attention_mode
            )
            part, cache = model.run_language_model(embeds[:, q], positions[:, :, q], allowed, cache)
            parts.append(part)
        hidden = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
    if kept is not None:
        kept.features, kept.ids = requests[0].features, list(requests[0].input_ids)
        kept.cache = fork_cache(cache, length, text_config)
    return Prefill(input_ids, attn, mm.bool(), positions, key_block, hidden, cache, reused)


def fork_cache(cache: DynamicCache, length: int, text_config) -> DynamicCache:
    """A new cache holding copies of the first `length` entries of every layer of `cache`."""
    out = DynamicCache(config=text_config)
    for i, layer in enumerate(cache.layers):
        out.update(layer.keys[:, :, :length].clone(), layer.values[:, :, :length].clone(), i)
    return out


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

    Each row ends on its own, with its own `finish_reason`: "eos" (its end-of-turn token, not kept),
    "length" (its budget of free tokens used up) or "repetition" (its free tokens ended in a loop,
    `repeating_period`, when repetition stopping is on for it; the loop's tokens are kept, and a
    `<|seg|>` among them still gets its mask). Only the generated tokens are judged: a forced prefix
    never counts towards a loop, so its tokens cannot end an answer one free token in.
    """
    device = model.device
    timer = _Timer(device)
    bsz = len(requests)
    seg_id = model.stamp.seg_token_id

    with timer("prefill"):
        pre = prefill(model, requests, pad_id)
        logits = model.lm_head(pre.hidden[:, -1])
        state = DecodeState(pre.cache, pre.key_block, pre.positions[:, :, -1].max(0).values + 1)

    merge = model.merge_size
    grids = [(int(r.grid_thw[1]) // merge, int(r.grid_thw[2]) // merge) for r in requests]
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed) if cfg.seed is not None else None
    tokens: list[list[int]] = [[] for _ in requests]
    masks: list[list[torch.Tensor]] = [[] for _ in requests]
    finished = [False] * bsz
    reasons = ["length"] * bsz  # what a row still running when the loop ends ran into
    limits = [  # the forced prefix is extra
        len(r.forced_ids) + (cfg.max_new_tokens if r.max_new_tokens is None else r.max_new_tokens)
        for r in requests
    ]
    stop = cfg.repetition_stop is not False
    watch = [stop if r.repetition_stop is None else r.repetition_stop for r in requests]
    total = max(limits)
    for step in range(total):
        with timer("decode"):
            chosen = _choose(logits, cfg, gen).tolist()
        step_tokens, seg_rows, looping = [], [], []
        for b, r in enumerate(requests):
            free = step >= len(r.forced_ids)
            tok = chosen[b] if free else r.forced_ids[step]
            finished[b] = finished[b] or step >= limits[b]
            if finished[b]:
                tok = pad_id
            elif tok in eos_ids:
                finished[b], reasons[b] = True, "eos"
            else:
                tokens[b].append(tok)
                if on_event is not None:
                    on_event("token", b, tok)
                if tok == seg_id and cfg.predict_masks:
                    seg_rows.append(b)
                if watch[b] and free and repeating_period(tokens[b][len(r.forced_ids) :]):
                    looping.append(b)  # fed this step (its `<|seg|>` gets its mask), then finished
                    reasons[b] = "repetition"
            step_tokens.append(tok)
        if not seg_rows and (step == total - 1 or all(f or b in looping for b, f in enumerate(finished))):
            break
        stage = "mask" if seg_rows else "decode"
        with timer(stage):
            logits, row_masks, state.cache = decode_step(
                model,
                state.cache,
                state.key_block,
                state.next_pos,
                step_tokens,
                finished,
                seg_rows,
                requests,
                grids,
            )
            state.appended(finished)
            for b in seg_rows:
                masks[b].append(row_masks[b].float().cpu())
                if on_event is not None:
                    on_event("mask", b, len(masks[b]) - 1, masks[b][-1])
        for b in looping:
            finished[b] = True
        if all(finished):
            break
    return [GenerationOutput(tokens[b], masks[b], dict(timer.totals), reasons[b]) for b in range(bsz)]


@torch.no_grad()
def decode_step(model, cache, key_block, next_pos, step_tokens, finished, seg_rows, requests, grids):
    """One step of the answer for a left-padded batch: feed one token per row and, for the rows whose
    token is `<|seg|>`, predict their masks in the same forward (module docstring).

    Args:
        cache: the KV cache of the history (B rows, K entries); left as it was plus the fed tokens.
        key_block: (B, K) block id of every cached entry (0 live, -1 padding: `build_hybrid_attention_mask`).
        next_pos: (B,) the position of the fed token in each row.
        step_tokens: B token ids; finished: B bools (a finished row feeds masked-out padding).
        seg_rows: the rows whose token is `<|seg|>`; requests / grids: each row's image features and
            (gh, gw) cells, which give its placeholders.
    Returns:
        (next-token logits (B, V), {row: (gh, gw) float mask logits} for the seg rows, cache).
    """
    seen = cache.get_seq_length()
    one_row = len(step_tokens) == 1 and not seg_rows  # batch 1, no mask pass: matrix-vector products
    with matvec_kernels(key_block.device, one_row):
        hidden, cache = _forward(
            model, cache, key_block, next_pos, step_tokens, finished, seg_rows, requests, grids
        )
        logits = model.lm_head(hidden[:, 0])
    row_masks = {}
    for b in seg_rows:
        gh, gw = grids[b]
        row_masks[b] = model.classifier(hidden[b, 1 : 1 + gh * gw]).float().view(gh, gw)
    extra = cache.get_seq_length() - (seen + 1)  # the placeholder slots
    if extra:
        cache.crop(-extra)
    return logits, row_masks, cache


@contextlib.contextmanager
def matvec_kernels(device: torch.device, one_row: bool):
    """The matmul kernels of a decode step: on the CPU, PyTorch's own bf16 matrix-vector product reads
    the weights about twice as fast as oneDNN, which PyTorch picks for every bf16 matmul, so a step of
    one row per weight runs with oneDNN off; from two rows up oneDNN is faster (docs/PERFORMANCE.md,
    decode). The results agree to float rounding. Elsewhere nothing changes."""
    if device.type != "cpu" or not one_row or not torch.backends.mkldnn.enabled:
        yield
        return
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = True


@dataclass
class DecodeState:
    """What the answer continues from, for a left-padded batch of B rows with K cached entries, updated
    in place after each step."""

    cache: DynamicCache
    """The KV cache of the history (K entries per row)."""
    key_block: torch.Tensor
    """(B, K) block id of every cached entry: 0 live, -1 padding (`build_hybrid_attention_mask`)."""
    next_pos: torch.Tensor
    """(B,) position of the next token fed in each row."""

    def appended(self, finished: list[bool]) -> None:
        """Record one fed token per row (padding for the finished rows) after the cache grew by it."""
        live = torch.tensor([[-1 if done else 0] for done in finished], device=self.key_block.device)
        self.key_block = torch.cat([self.key_block, live], dim=1)
        self.next_pos = self.next_pos + 1


def _forward(model, cache, key_block, next_pos, step_tokens, finished, seg_rows, requests, grids):
    """The decoder forward of `decode_step`: one token per row, then the placeholder slots of the seg
    rows (padded to the largest N; none when `seg_rows` is empty). Returns (hidden (B, 1 + n_max, H),
    cache holding the history, the tokens and the n_max slots)."""
    device = key_block.device
    bsz, hist = key_block.shape
    tok = torch.tensor(step_tokens, device=device).view(bsz, 1)
    embeds = model.get_input_embeddings()(tok)  # (B, 1, H)
    pos = next_pos.view(1, bsz, 1).expand(3, bsz, 1)
    new_block = torch.tensor([[-1 if done else 0] for done in finished], device=device)  # finished: padding
    mode = model.stamp.attention_mode
    if seg_rows:
        ph, ph_pos, ph_block = _placeholder_inputs(model, bsz, seg_rows, requests, grids, next_pos, device)
        q_block = torch.cat([new_block, ph_block], dim=1)
        q_index = (hist + torch.arange(q_block.shape[1], device=device)).expand(bsz, -1)
        q_limit = torch.full(q_block.shape, hist, device=device)  # the token / the `<|seg|>`
        allowed = build_hybrid_attention_mask(
            torch.cat([key_block, q_block], dim=1), q_block, q_index, q_limit, mode
        )
        embeds = torch.cat([embeds, ph.to(embeds.dtype)], dim=1)
        return model.run_language_model(embeds, torch.cat([pos, ph_pos], dim=2), allowed, cache)
    # A (B, 1, 1, K) mask even without padding: given a mask and one query, transformers' sdpa runs the
    # query heads of each key/value head as one small attention (no repeated keys), about 15x faster on
    # the CPU than the unmasked grouped-query kernel at the 2B shape (docs/PERFORMANCE.md, decode).
    keys = torch.cat([key_block, new_block], dim=1)
    here = torch.full((bsz, 1), hist, device=device)
    allowed = build_hybrid_attention_mask(keys, new_block, here, here, mode)
    return model.run_language_model(embeds, pos, allowed, cache)


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
