"""Turning results into API payloads: incremental text, mask entries with their phrases, SSE frames."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable

import numpy as np
from PIL import Image

from stamp.inference.predictor import StampMask
from stamp.outputs.jsondoc import dumps
from stamp.outputs.records import COLORS, color_of, mask_record, phrase_spans  # noqa: F401  (re-exported)


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


def png_base64(mask: np.ndarray) -> str:
    """A bool mask as a base64 PNG (0/255)."""
    buf = io.BytesIO()
    Image.fromarray(mask.astype(np.uint8) * 255).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def mask_payload(mask: StampMask, k: int, text: str, return_png: bool, prompt: str | None = None) -> dict:
    """The API's entry for mask k: its record (`stamp.outputs.records.mask_record`, `file` null) and, when
    `return_png`, the mask as a base64 PNG; `text` is the answer up to (at least) its `<|seg|>`, `prompt`
    the request (names a mask the answer does not name)."""
    record = mask_record(mask, k, text, None, prompt)
    return {**record, "png": png_base64(mask.mask) if return_png else None}


def sse(event: str, data: dict) -> str:
    """One server-sent-events frame (the JSON is on one line; strict: NaN/inf as null)."""
    return f"event: {event}\ndata: {dumps(data, ensure_ascii=False)}\n\n"
