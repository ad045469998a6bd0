"""Helpers of the serving tests (plain functions and a scripted predictor)."""

import io
import threading

from helpers import random_image

from stamp.inference import StampPredictor

FORCE = "Sure, it is <|seg|>"


def image_bytes(w: int = 120, h: int = 90, fmt: str = "PNG", seed: int = 0, **save) -> bytes:
    buf = io.BytesIO()
    random_image(h, w, seed).save(buf, format=fmt, **save)
    return buf.getvalue()


def upload(data: bytes | None = None, name: str = "img.png", mime: str = "image/png") -> dict:
    return {"image": (name, image_bytes() if data is None else data, mime)}


class ScriptedPredictor(StampPredictor):
    """The tiny model, plus test hooks keyed on the prompt: "SLOW" blocks the worker until `gate` is
    set (and sets `entered`), "BOOM" raises inside generation."""

    def __init__(self, model, processor):
        super().__init__(model, processor)
        self.gate, self.entered = threading.Event(), threading.Event()
        self.batch_sizes: list[int] = []

    def chat_batch(self, requests, **kwargs):
        self.batch_sizes.append(len(requests))
        if any("SLOW" in r.prompt for r in requests):
            self.entered.set()
            self.gate.wait(20)
        if any("BOOM" in r.prompt for r in requests):
            raise RuntimeError("scripted failure")
        return super().chat_batch(requests, **kwargs)
