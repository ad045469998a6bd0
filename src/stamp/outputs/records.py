"""The mask record: one JSON object per predicted mask, the same in every output.

`stamp segment`'s result.json, `stamp demo`'s result.json, the HTTP API's `masks` (and each SSE `mask`
event) all hold records built by `mask_record`:

    index   k: the mask of the k-th `<|seg|>` of the answer
    phrase  the words of the answer the mask belongs to (before its `<|seg|>`)
    span    [start, end) of the phrase in the answer text, in code points
    color   '#rrggbb': the mask's colour in overlays and on the web page (`PALETTE`, in order)
    area    foreground pixels
    bbox    [x, y, w, h] (COCO convention), null when the mask is empty
    score   mean foreground probability of the cells predicted foreground (0 for an empty mask)
    grid    [gh, gw]: the 28x28 cells the model classified
    rle     COCO run-length encoding {size: [h, w], counts: str}, decodable with pycocotools
    file    the mask's PNG (0/255) next to the record's JSON file; null where no file is written

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


def encode_rle(mask: np.ndarray) -> dict:
    """COCO RLE of a bool HxW mask, with `counts` as a str (JSON-serialisable)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def mask_record(mask, k: int, text: str, file: str | None = None) -> dict:
    """The record of mask k (a `StampMask`); `text` is the answer up to (at least) its `<|seg|>`."""
    spans = phrase_spans(text)
    phrase, start, end = spans[k] if k < len(spans) else ("", len(text), len(text))
    return {
        "index": k,
        "phrase": phrase,
        "span": [start, end],
        "color": color_of(k),
        "area": mask.area,
        "bbox": mask.bbox,
        "score": round(float(mask.score), 6),
        "grid": list(mask.patch_logits.shape),
        "rle": encode_rle(mask.mask),
        "file": file,
    }


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
