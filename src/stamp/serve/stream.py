"""Turning results into API payloads: incremental text, mask entries with their phrases, SSE frames."""

from __future__ import annotations

import base64
import io
import json
import re
from collections.abc import Callable

import numpy as np
from PIL import Image

from stamp.inference.predictor import StampMask
from stamp.io.outputs import PALETTE, encode_rle
from stamp.model.tokens import SEG_TOKEN

COLORS = ["#{:02x}{:02x}{:02x}".format(*c) for c in PALETTE]
_BOUNDARY = re.compile(r"[.,;:!?\n]")
_LEADING = re.compile(r"^(?:and|or|then|also)(?:\s+|$)", re.IGNORECASE)
_TRAILING = re.compile(r"\s+(?:is|are|was|were)$", re.IGNORECASE)


def color_of(k: int) -> str:
    """'#rrggbb' of mask k: the same palette, in the same order, as `stamp.io.overlay_masks`."""
    return COLORS[k % len(COLORS)]


class TextStreamer:
    """Token ids in, clean text deltas out.

    Byte-level BPE tokens can end in the middle of a UTF-8 character; the decoded text then ends with
    U+FFFD. Such text is held back until a later token completes it (or `flush()` at the end), so the
    concatenated deltas always equal the final decoded answer and never contain a half character.
    A `<|seg|>` token flushes everything before it, so its mask can follow it at once.
    """

    def __init__(self, decode: Callable[[list[int]], str], seg_id: int):
        self.decode, self.seg_id = decode, seg_id
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, token_id: int) -> str:
        """Add one token; return the text that became final (possibly '')."""
        self.ids.append(token_id)
        text = self.decode(self.ids)
        if token_id != self.seg_id and text.endswith("\ufffd"):
            return ""
        return self._advance(text)

    def flush(self) -> str:
        """The end of the answer: whatever is still held back."""
        return self._advance(self.decode(self.ids))

    def _advance(self, text: str) -> str:
        if not text.startswith(self.emitted):  # a decoder rewrote earlier text: keep what was sent
            return ""
        delta = text[len(self.emitted) :]
        self.emitted = text
        return delta


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


def png_base64(mask: np.ndarray) -> str:
    """A bool mask as a base64 PNG (0/255)."""
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def mask_payload(mask: StampMask, k: int, text: str, return_png: bool) -> dict:
    """The API's entry for mask k; `text` is the answer up to (at least) its `<|seg|>`."""
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
        "png": png_base64(mask.mask) if return_png else None,
    }


def sse(event: str, data: dict) -> str:
    """One server-sent-events frame (the JSON is on one line)."""
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
