"""The mask record: one JSON object per predicted mask, the same in every output.

`stamp segment`'s result.json, `stamp demo`'s result.json, the HTTP API's `masks` (and each SSE `mask`
event) all hold records built by `mask_record`:

    index   k: the mask of the k-th `<|seg|>` of the answer
    phrase  what the mask shows: the words of the answer before its `<|seg|>`, or, where those do not
            name anything ("it", "the segmentation result", nothing at all), what the request asked
            for ("Please segment the red circle." -> "the red circle"; `mask_phrase`)
    span    [start, end) of the answer's words before the `<|seg|>`, in code points (what a page
            highlights in the answer; it may differ from `phrase` where that comes from the request)
    color   '#rrggbb': the mask's colour in overlays and on the web page (`PALETTE`, in order)
    area    foreground pixels
    bbox    [x, y, w, h] (COCO convention), null when the mask is empty
    score   mean foreground probability of the cells predicted foreground (0 for an empty mask)
    grid    [gh, gw]: the 28x28 cells the model classified
    rle     COCO run-length encoding {size: [h, w], counts: str}, decodable with pycocotools
    file    the mask's PNG (0/255) next to the record's JSON file; null where no file is written

Every result (result.json, `StampResult.to_dict()`, the HTTP response) holds, besides its masks,
`timings` (seconds of this answer; where several answers shared a batch, its equal share of the
batch's vision, prefill, decode and mask passes, so that summing over a batch's answers gives the
batch's total) and `batch` ({size, timings}: the whole batch's shared passes; `result_timings`).

Next to its masks every result (result.json, the HTTP response, the SSE `done` event) says why its
answer ended, `finish_reason` (`FINISH_REASONS`): "eos" (the model ended it), "length" (the answer token
budget ran out: it may be cut off) or "repetition" (it was stopped in a degenerate loop).
"""

from __future__ import annotations

import re

import numpy as np
from pycocotools import mask as mask_utils

SEG_TOKEN = "<|seg|>"
"""The mask trigger token (`stamp.model.tokens.SEG_TOKEN`; stamp.outputs imports nothing from the model)."""

# Distinct, colour-blind friendly colours (Okabe-Ito), one per mask in order.
PALETTE = [
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
]
COLORS = ["#{:02x}{:02x}{:02x}".format(*c) for c in PALETTE]
FINISH_REASONS = ("eos", "length", "repetition")
"""`stamp.inference.generation.FINISH_REASONS`."""
MASK_RECORD_KEYS = ("index", "phrase", "span", "color", "area", "bbox", "score", "grid", "rle", "file")

SHARED_TIMINGS = ("vision", "prefill", "decode", "mask")
"""The timings of passes a batch of answers shares (`StampPredictor.chat_batch`); the others
(postprocess, refine) are each answer's own."""
GENERIC_PHRASES = frozenset(
    {
        "",
        "it",
        "this",
        "that",
        "they",
        "them",
        "these",
        "those",
        "here",
        "there",
        "one",
        "mask",
        "the mask",
        "the masks",
        "the result",
        "the results",
        "the segmentation",
        "the segmentation mask",
        "the segmentation result",
        "the segmentation results",
        "segmentation",
        "the object",
        "the target",
        "the answer",
        "the region",
        "the area",
    }
)
"""Phrases that name nothing (after `_FILLER` is removed): a mask so named is named by its request."""
_FILLER = re.compile(
    r"^(?:(?:here is|here are|this is|that is|it is|of course|sure|okay|ok|yes|certainly|here)\b[\s,]*)+",
    re.IGNORECASE,
)
_ASK = re.compile(
    r"\b(?:segment(?:ation of)?|find|locate|highlight|mask|show(?: me)?|point out|outline|detect|"
    r"where (?:is|are))\s+(?P<what>.+)$",
    re.IGNORECASE,
)
_ASK_TAIL = re.compile(
    r"(?:\s+(?:in|from|of) (?:the|this) (?:image|picture|photo|scene))?\s*[.?!]*\s*$", re.I
)
_ASK_MAX = 60
_BOUNDARY = re.compile(r"[.,;:!?\n]")
_LEADING = re.compile(r"^(?:and|or|then|also)(?:\s+|$)", re.IGNORECASE)
_TRAILING = re.compile(r"\s+(?:is|are|was|were)$", re.IGNORECASE)


def color_of(k: int) -> str:
    """'#rrggbb' of mask k: the overlay palette, in order."""
    return COLORS[k % len(COLORS)]


def phrase_spans(text: str) -> list[tuple[str, int, int]]:
    """(phrase, start, end) for each `<|seg|>` of `text`: the words before it, back to the previous
    `<|seg|>` or punctuation, without a leading "and" or a trailing "is"; offsets in code points."""
    spans, prev = [], 0
    pos = text.find(SEG_TOKEN)
    while pos >= 0:
        start = prev
        for m in _BOUNDARY.finditer(text, prev, pos):
            start = m.end()
        piece = text[start:pos]
        lead = len(piece) - len(piece.lstrip())
        piece = piece.strip()
        cut = _LEADING.match(piece)
        if cut:
            lead, piece = lead + cut.end(), piece[cut.end() :]
        piece = _TRAILING.sub("", piece)
        spans.append((piece, start + lead, start + lead + len(piece)))
        prev = pos + len(SEG_TOKEN)
        pos = text.find(SEG_TOKEN, prev)
    return spans


def asked_phrase(prompt: str | None) -> str:
    """What a request asks to segment: the words after its verb ("Please segment the red circle." ->
    "the red circle"), else its first sentence that says nothing of masks ("What can hold water?
    Please output a segmentation mask." -> "What can hold water"); at most 60 characters."""
    if not prompt:
        return ""
    sentences = [p.strip() for p in re.split(r"(?<=[.?!])\s+|\n+", prompt.strip()) if p.strip()]
    asked = next((m.group("what") for p in sentences if (m := _ASK.search(p))), None)
    if asked is None:  # a question: the first sentence that is not an instruction about masks
        plain = [p for p in sentences if not re.search(r"\b(?:segmentation|mask)", p, re.IGNORECASE)]
        asked = (plain or sentences)[0]
    text = _ASK_TAIL.sub("", asked).strip()
    text = re.sub(r"^(?:please|can you|could you)\s+", "", text, flags=re.IGNORECASE).strip()
    return text if len(text) <= _ASK_MAX else text[: _ASK_MAX - 3].rstrip() + "..."


def names_nothing(phrase: str) -> bool:
    """Whether an answer's phrase names nothing: empty, a pronoun, "the segmentation result", ..."""
    return _FILLER.sub("", phrase.strip()).strip().lower() in GENERIC_PHRASES


def mask_phrase(text: str, k: int, prompt: str | None = None) -> str:
    """The phrase of mask k (module docstring): the answer's words before its `<|seg|>`, or what
    `prompt` asked for where those name nothing (`names_nothing`)."""
    spans = phrase_spans(text)
    phrase = spans[k][0] if k < len(spans) else ""
    if names_nothing(phrase) and prompt:
        return asked_phrase(prompt) or phrase
    return phrase


def encode_rle(mask: np.ndarray) -> dict:
    """COCO RLE of a bool HxW mask, with `counts` as a str (JSON-serialisable)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def mask_record(mask, k: int, text: str, file: str | None = None, prompt: str | None = None) -> dict:
    """The record of mask k (a `StampMask`); `text` is the answer up to (at least) its `<|seg|>`,
    `prompt` the request (names a mask the answer does not name: `mask_phrase`)."""
    spans = phrase_spans(text)
    _, start, end = spans[k] if k < len(spans) else ("", len(text), len(text))
    return {
        "index": k,
        "phrase": mask_phrase(text, k, prompt),
        "span": [start, end],
        "color": color_of(k),
        "area": mask.area,
        "bbox": mask.bbox,
        "score": round(float(mask.score), 6),
        "grid": list(mask.patch_logits.shape),
        "rle": getattr(mask, "rle", None) or encode_rle(mask.mask),
        "file": file,
    }


def result_timings(timings: dict[str, float], batch_size: int = 1) -> tuple[dict, dict]:
    """(this answer's timings, the batch's) from a `StampResult`'s `timings`: the shared passes
    (`SHARED_TIMINGS`) divided among the batch's `batch_size` answers, the others as they are; the
    batch's: {"size", "timings": the shared passes' whole seconds}. Rounded to microseconds. (The
    predictor's vision time is already each answer's share; its whole is that times the size.)"""
    n = max(int(batch_size), 1)
    whole = {k: v * n if k == "vision" else v for k, v in timings.items() if k in SHARED_TIMINGS}
    own = {k: (v / n if k in SHARED_TIMINGS and k != "vision" else v) for k, v in timings.items()}
    return (
        {k: round(float(v), 6) for k, v in own.items()},
        {"size": n, "timings": {k: round(float(v), 6) for k, v in whole.items()}},
    )


def finish_warning(reason: str, n_tokens: int) -> str | None:
    """What to tell a user about an answer that did not end by itself (None for "eos")."""
    if reason == "length":
        return f"the answer hit the token limit ({n_tokens} tokens) and may be cut off (--max-new-tokens)"
    if reason == "repetition":
        return (
            f"the answer was stopped after {n_tokens} tokens: it kept repeating itself (the model is "
            "out of its depth here; --no-repetition-stop lets it run on)"
        )
    return None
