"""The prompt pass needs memory linear in the prompt length L: no (B, 1, L, L) attention mask, neither
for one unpadded request (sdpa's causal kernel, no mask at all) nor for a left-padded batch (chunks of
queries against the cache, each with a (B, 1, C, K) mask)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from stamp.inference.generation import PREFILL_CHUNK, GenerationRequest, prefill
from stamp.tiny import build_tiny_model


def _text_requests(model, lengths):
    """Text-only prompts of the given token counts (no image tokens: the test is about the text)."""
    hidden = model.config.get_text_config().hidden_size
    return [
        GenerationRequest([5 + i % 50 for i in range(n)], torch.zeros(0, hidden), torch.tensor([1, 2, 2]))
        for n in lengths
    ]


@pytest.fixture
def sdpa_masks(monkeypatch):
    """Every attention call of the language model: (mask elements or None, is_causal, query length)."""
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, *args, **kwargs):
        causal = kwargs.get("is_causal", args[1] if len(args) > 1 else False)
        seen.append((None if attn_mask is None else attn_mask.numel(), bool(causal), q.shape[-2]))
        return real(q, k, v, attn_mask, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    return seen


def test_unpadded_prefill_hands_sdpa_no_mask(sdpa_masks):
    model, processor = build_tiny_model(seed=0)
    length = 3000
    pre = prefill(model, _text_requests(model, [length]), processor.pad_token_id)
    prompt_calls = [s for s in sdpa_masks if s[2] > 1]
    assert pre.hidden.shape[1] == length and prompt_calls
    assert all(mask is None and causal for mask, causal, _ in prompt_calls)  # the is_causal kernel


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_padded_prefill_masks_grow_linearly(attn, monkeypatch):
    """The largest mask built for a left-padded batch is at most B x PREFILL_CHUNK x L elements."""
    import stamp.inference.generation as generation

    model, processor = build_tiny_model(seed=0, attn_implementation=attn)
    built = []
    real = generation.build_hybrid_attention_mask

    def counting(*args, **kwargs):
        mask = real(*args, **kwargs)
        built.append(mask.numel())
        return mask

    monkeypatch.setattr(generation, "build_hybrid_attention_mask", counting)
    length, rows = 3000, 2
    pre = prefill(model, _text_requests(model, [length, 1000]), processor.pad_token_id)
    assert pre.attention_mask[1].sum() == 1000 and pre.hidden.shape[1] == length
    assert built and max(built) <= rows * PREFILL_CHUNK * length < rows * length * length // 4


def test_padded_prefill_equals_each_row_alone():
    """Chunking the prompt pass changes nothing: a padded batch's hidden states at each row's tokens are
    those of the row alone (unpadded: sdpa's causal kernel), over several chunks."""
    model, processor = build_tiny_model(seed=3)
    lengths = [2 * PREFILL_CHUNK + 37, PREFILL_CHUNK - 5]
    reqs = _text_requests(model, lengths)
    pad = processor.pad_token_id
    batch = prefill(model, reqs, pad)
    for b, n in enumerate(lengths):
        alone = prefill(model, [reqs[b]], pad)
        torch.testing.assert_close(batch.hidden[b, -n:], alone.hidden[0], atol=1e-5, rtol=0)
    chunked = prefill(model, reqs[:1], pad, chunk=100)  # the chunked form of an unpadded row, too
    torch.testing.assert_close(chunked.hidden, prefill(model, reqs[:1], pad).hidden, atol=1e-5, rtol=0)


PROBE = textwrap.dedent(
    """
    import json, sys, torch
    torch.set_num_threads(1)
    from helpers import random_image
    from stamp.inference import ChatRequest, StampPredictor
    from stamp.tiny import build_tiny_model

    def kib(field):
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith(field))

    pred = StampPredictor(*build_tiny_model(seed=0), max_prompt_tokens=None)
    words = [f"w{i % 97}" for i in range(40000)]

    def prompt_of(n):
        lo, hi = 1, len(words)
        while lo < hi:  # the fewest words with at least n tokens
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if pred.prompt_tokens(" ".join(words[:mid])) < n else (lo, mid)
        return " ".join(words[:lo])

    def run(n_tokens):
        prompts = [prompt_of(n_tokens), prompt_of(n_tokens // 2)]  # two lengths: a left-padded batch
        reqs = [ChatRequest(random_image(56, 56, i), p, answer_prefix="<|seg|>", max_new_tokens=2)
                for i, p in enumerate(prompts)]
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the peak (VmHWM) to the current resident size
        before = kib("VmRSS")
        results = pred.chat_batch(reqs)
        assert all(len(r.masks) >= 1 for r in results)
        return (kib("VmHWM") - before) * 1024, [pred.prompt_tokens(p) for p in prompts]

    run(256)  # warm up: first-call allocations are not the prompt's
    short, _ = run(int(sys.argv[1]))
    long, tokens = run(int(sys.argv[2]))
    print(json.dumps({"short": short, "long": long, "tokens": tokens}))
    """
)


def test_peak_memory_of_a_long_prompt_is_linear(tmp_path):
    """Linear, measured: the peak resident memory a padded batch adds (VmHWM, reset before the call, in
    a fresh process where every large buffer is its own mapping, so freed memory leaves the RSS) at two
    prompt lengths, 1,500 and 12,000 tokens. 8x the tokens must cost at most 3 x 8x the memory (measured
    here: 12 -> 94 MiB, 7.8x; anything growing as L^2 gives up to 64x), and the long prompt's growth
    stays below what ONE dense B x L x L bool mask alone would take (the code before this test built
    several of them)."""
    if not os.path.exists("/proc/self/clear_refs"):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak resident size")
    short_n, long_n = 1500, 12000
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(__file__)), env.get("PYTHONPATH", "")]
    )
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, str(short_n), str(long_n)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["tokens"][0] >= long_n
    dense = 2 * long_n * long_n  # bytes of one (2, 1, L, L) bool mask: 288 MB
    print(
        f"peak RSS growth: {got['short'] / 2**20:.0f} MiB at {short_n} tokens, "
        f"{got['long'] / 2**20:.0f} MiB at {long_n} tokens (one dense mask: {dense / 2**20:.0f} MiB)"
    )
    assert got["long"] < dense  # measured: ~94 MiB here; with one L x L mask (the old code) ~1.5 GB
    ratio = long_n / short_n
    assert got["short"] > 0 and got["long"] / got["short"] < 3 * ratio, (got, ratio)  # not ~ratio**2
