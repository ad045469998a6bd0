"""The one record every loader produces and every collator consumes.

A `StampSample` is a conversation about one image. Assistant turns may contain the `<|seg|>` token any
number of times; `masks` holds one ground-truth mask per `<|seg|>`, in the order they appear in the
conversation. Masks are HxW uint8 arrays at the image's original size: 0 background, 1 foreground,
255 ignore (excluded from the loss and from the metrics).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

SEG_TOKEN = "<|seg|>"
"""Where a mask belongs in an answer, in the data's text format (the same text as the model's token)."""
MASK_TOKEN = "<|mask|>"
"""The model's placeholder token, reserved: data text must not contain it."""
IGNORE_INDEX = 255


@dataclass
class Turn:
    """One message. `role` is "user" or "assistant"."""

    role: str
    text: str

    def __post_init__(self) -> None:
        if self.role not in ("user", "assistant"):
            raise ValueError(f"turn role must be 'user' or 'assistant', got {self.role!r}")


HistoryLike = Sequence[Turn | tuple[str, str] | Mapping[str, str]] | None
"""What `parse_history` takes: None, or a list of `Turn`s, (role, text) pairs or {"role", "text"} dicts."""


class HistoryError(ValueError):
    """A conversation history that is not alternating user / assistant turns, starting with the user and
    ending with the assistant, in one of the accepted forms (`parse_history`)."""


def parse_history(history: Any) -> list[Turn]:
    """The earlier turns of a conversation, in the one format the Python API, the command line and the
    server share, as `Turn`s; `HistoryError` (a ValueError) for anything else.

    Accepted: None (no history) or a list (any sequence but a string) whose items are each a `Turn`, a
    (role, text) pair, or a {"role": ..., "text": ...} mapping (the HTTP API's JSON form); roles
    "user" / "assistant", texts strings. The turns must alternate user, assistant, ..., starting with a
    user turn and ending with an assistant turn (the prompt is the next user turn).

    >>> parse_history([{"role": "user", "text": "Hi."}, ("assistant", "Hello.")])
    [Turn(role='user', text='Hi.'), Turn(role='assistant', text='Hello.')]
    """
    if history is None:
        return []
    if isinstance(history, (str, bytes)) or not isinstance(history, (list, tuple)):
        raise HistoryError(
            f"the history must be a list of turns ({{role, text}} or (role, text)), got {type(history).__name__}"
        )
    turns = []
    for i, item in enumerate(history):
        if isinstance(item, Turn):
            role, text = item.role, item.text
        elif isinstance(item, Mapping):
            if set(item) != {"role", "text"}:
                raise HistoryError(
                    f"history turn {i} must have exactly the keys role and text, got {sorted(item)}"
                )
            role, text = item["role"], item["text"]
        elif isinstance(item, (list, tuple)) and len(item) == 2:
            role, text = item
        else:
            raise HistoryError(f"history turn {i} must be {{role, text}} or (role, text), got {item!r}"[:200])
        if role not in ("user", "assistant"):
            raise HistoryError(f"history turn {i}: role must be 'user' or 'assistant', got {role!r}")
        if not isinstance(text, str):
            raise HistoryError(f"history turn {i}: text must be a string, got {type(text).__name__}")
        want = "user" if i % 2 == 0 else "assistant"
        if role != want:
            raise HistoryError(f"history turn {i} must be a {want} turn, not {role}")
        turns.append(Turn(role, text))
    if len(turns) % 2:
        raise HistoryError("the history must end with an assistant turn (the prompt is the next user turn)")
    return turns


@dataclass
class StampSample:
    """A conversation about one image, with one ground-truth mask per `<|seg|>` in assistant turns.

    Attributes:
        id: unique, stable identifier (e.g. "refcoco/val/123" or "synthref/val/7").
        image: a PIL image, or a path loaded lazily by `load_image()`.
        turns: alternating user/assistant turns, starting with the user.
        masks: HxW uint8 arrays (0/1, 255 = ignore), one per `<|seg|>` in the assistant turns.
        task: "refer", "grefer", "reason", "vqa", "multi" ... (free text used for bookkeeping).
        meta: anything else (ann ids, no_target flag, short answer for VQA scoring, ...).
    """

    id: str
    image: Image.Image | str | Path
    turns: list[Turn]
    masks: list[np.ndarray] = field(default_factory=list)
    task: str = "refer"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n_seg = sum(t.text.count(SEG_TOKEN) for t in self.turns if t.role == "assistant")
        if n_seg != len(self.masks):
            raise ValueError(
                f"sample {self.id}: {n_seg} {SEG_TOKEN} token(s) in assistant turns but {len(self.masks)} mask(s)"
            )

    def load_image(self) -> Image.Image:
        """The image as an RGB PIL image (paths are opened here, EXIF orientation applied)."""
        from stamp.imaging import load_image

        return load_image(self.image)
