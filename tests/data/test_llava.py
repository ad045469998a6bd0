"""LLaVA-format dialogue loader."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datafixtures import write_image

from stamp.data import DataError, load_llava

ENTRIES = [
    {
        "id": "000001",
        "image": "coco/a.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nWhat is on the table?"},
            {"from": "gpt", "value": "A cup."},
            {"from": "human", "value": "What colour is it?"},
            {"from": "gpt", "value": "Red."},
        ],
    },
    {"id": "000002", "conversations": [{"from": "human", "value": "Hello"}, {"from": "gpt", "value": "Hi"}]},
    {
        "id": "000003",
        "image": "b.png",
        "conversations": [
            {"from": "human", "value": "Describe it.\n<image>"},
            {"from": "gpt", "value": "Noise."},
        ],
    },
]


@pytest.fixture()
def llava_files(tmp_path: Path) -> tuple[Path, Path]:
    write_image(tmp_path / "images" / "coco" / "a.jpg", (20, 10))
    write_image(tmp_path / "images" / "b.png", (8, 8))
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(ENTRIES))
    return path, tmp_path / "images"


def test_llava_turns_and_image_placeholder(llava_files: tuple[Path, Path]) -> None:
    ds = load_llava(*llava_files)
    assert len(ds) == 2 and ds.skipped == 1
    first = ds[0]
    assert [(t.role, t.text) for t in first.turns] == [
        ("user", "What is on the table?"),
        ("assistant", "A cup."),
        ("user", "What colour is it?"),
        ("assistant", "Red."),
    ]
    assert first.masks == [] and first.task == "vqa" and first.id == "llava/000001"
    assert first.load_image().size == (20, 10)
    assert ds[1].turns[0].text == "Describe it."


def test_llava_errors(llava_files: tuple[Path, Path], tmp_path: Path) -> None:
    path, images = llava_files
    (images / "b.png").unlink()
    with pytest.raises(DataError, match=r"image not found: .*b\.png"):
        load_llava(path, images)[1]
    with pytest.raises(DataError, match="image folder not found"):
        load_llava(path, tmp_path / "nope")
    bad = [{"id": "x", "image": "coco/a.jpg", "conversations": [{"from": "system", "value": "?"}]}]
    path.write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"corrupt conversation x in .*llava\.json: turn 0 has 'from'"):
        load_llava(path, images)[0]
    path.write_text("[")
    with pytest.raises(DataError, match=r"corrupt LLaVA conversation file .*llava\.json"):
        load_llava(path, images)
    with pytest.raises(DataError, match="not found"):
        load_llava(tmp_path / "missing.json", images)
