"""LLaVA-style visual dialogue data: a JSON list of {id, image, conversations: [{from, value}]}.

`from` is "human" (user) or "gpt" (assistant); the `<image>` placeholder is removed from the first
human turn (the processor inserts the image itself). Images are relative to an image folder. Entries
without an image (text-only dialogues) are skipped and counted in `skipped`.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from stamp.data.coco import read_json
from stamp.data.errors import DataError
from stamp.data.refer import check_image
from stamp.data.sample import MASK_TOKEN, SEG_TOKEN, StampSample, Turn

ROLES = {"human": "user", "gpt": "assistant"}
IMAGE_PLACEHOLDER = "<image>"


def conversation_to_turns(conversations: list[dict], where: str) -> list[Turn]:
    """LLaVA `conversations` -> alternating `Turn`s, starting with the user; `<image>` dropped from the
    first human turn. `where` names the entry in error messages."""
    turns = []
    for k, msg in enumerate(conversations):
        role = ROLES.get(msg.get("from")) if isinstance(msg, dict) else None
        if role is None:
            raise DataError(
                f"corrupt conversation {where}: turn {k} has 'from' {msg!r}; expected human or gpt"
            )
        expected = "user" if k % 2 == 0 else "assistant"
        if role != expected:
            raise DataError(
                f"corrupt conversation {where}: turn {k} is from {msg['from']!r}, expected alternation"
            )
        text = str(msg.get("value", ""))
        if SEG_TOKEN in text or MASK_TOKEN in text:
            raise DataError(f"corrupt conversation {where}: turn {k} contains a reserved token")
        if k == 0:
            text = text.replace(IMAGE_PLACEHOLDER, "").strip()
        turns.append(Turn(role, text))
    if not turns:
        raise DataError(f"corrupt conversation {where}: no turns")
    return turns


class LlavaDataset:
    """A LLaVA-format dialogue file as `StampSample`s (task "vqa", no masks).

    Args:
        json_path: the JSON list.
        image_folder: folder the entries' `image` paths are relative to.
    """

    def __init__(self, json_path: str | Path, image_folder: str | Path) -> None:
        self.json_path, self.image_folder = Path(json_path), Path(image_folder)
        data = read_json(self.json_path, "LLaVA conversation file")
        if not isinstance(data, list):
            raise DataError(f"corrupt LLaVA conversation file {self.json_path}: expected a JSON list")
        if not self.image_folder.is_dir():
            raise DataError(f"image folder not found: {self.image_folder}")
        self.entries = []
        for k, entry in enumerate(data):
            if not isinstance(entry, dict) or not isinstance(entry.get("conversations"), list):
                raise DataError(
                    f"corrupt LLaVA conversation file {self.json_path}: entry {k} has no conversations"
                )
            if entry.get("image"):
                self.entries.append(entry)
        self.skipped = len(data) - len(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[StampSample]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: int) -> StampSample:
        entry = self.entries[index]
        entry_id = str(entry.get("id", index))
        turns = conversation_to_turns(entry["conversations"], f"{entry_id} in {self.json_path}")
        path = check_image(self.image_folder / entry["image"])
        meta = {"source": "llava", "entry_id": entry_id}
        if "answer" in entry:  # a short gold answer, when the file carries one (e.g. SynthRef exports)
            meta["answer"] = entry["answer"]
        return StampSample(f"llava/{entry_id}", path, turns, [], task="vqa", meta=meta)


def load_llava(json_path: str | Path, image_folder: str | Path) -> LlavaDataset:
    """Open a LLaVA-format dialogue file (see `LlavaDataset`)."""
    return LlavaDataset(json_path, image_folder)
