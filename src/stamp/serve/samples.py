"""Sample images and example prompts for the web demo: SynthRef val scenes (what the bundled model
was trained on), rendered on first use and kept in memory."""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass

SAMPLE_INDICES = (0, 3, 4, 2)  # SynthRef val (seed 0): several masks, a count, a single target
GENERIC_PROMPTS = [
    "Please segment the largest shape.",
    "How many shapes are in the image?",
    "What colour is the background?",
]
FORCE_MASK_PREFIX = "Sure, it is <|seg|>"


@dataclass
class SampleImage:
    name: str
    png: bytes
    width: int
    height: int
    prompts: list[str]


class SampleStore:
    """`get(name)` / `all()`: the demo's sample scenes, generated once (thread-safe, lazy)."""

    def __init__(self, indices: tuple[int, ...] = SAMPLE_INDICES):
        self.indices = indices
        self._samples: dict[str, SampleImage] | None = None
        self._lock = threading.Lock()

    def all(self) -> list[SampleImage]:
        with self._lock:
            if self._samples is None:
                self._samples = {s.name: s for s in (self._render(i) for i in self.indices)}
            return list(self._samples.values())

    def get(self, name: str) -> SampleImage | None:
        return next((s for s in self.all() if s.name == name), None)

    @staticmethod
    def _render(index: int) -> SampleImage:
        from stamp.data.synthref import SynthRef

        sample = SynthRef("val", seed=0)[index]
        image = sample.load_image().convert("RGB")
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        prompts = [t.text for t in sample.turns if t.role == "user"][:2]
        return SampleImage(f"scene-{index}", buf.getvalue(), image.width, image.height, prompts)
