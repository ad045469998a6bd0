"""`stamp chat IMAGE`: a conversation about an image from a piped standard input -- several turns with
their history, /image to switch, one result folder per turn, errors said without ending it."""

import io
import json

import pytest
from helpers import random_image

import stamp.cli.chat
from stamp.cli import main


@pytest.fixture
def images(tmp_path):
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    random_image(64, 80, seed=0).save(a)
    random_image(48, 48, seed=1).save(b)
    return a, b


def _chat(monkeypatch, lines: list[str], *argv: str) -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO("".join(f"{line}\n" for line in lines)))
    return main(["chat", *argv, "--max-new-tokens", "8"])


def test_turns_with_history_image_switch_and_errors(tmp_path, images, monkeypatch, capsys):
    a, b = images
    out = tmp_path / "talk"
    lines = [
        "How many shapes?",
        "Segment the red circle.",
        "/bogus",
        "/image missing.png",
        f"/image {b}",
        "And here?",
    ]
    assert _chat(monkeypatch, lines, str(a), "--out", str(out)) == 0
    captured = capsys.readouterr()
    assert captured.out.count("stamp> ") == 3 and "3 turn(s) written" in captured.out
    assert "unknown command /bogus" in captured.err and "image file not found: missing.png" in captured.err
    turns = [json.loads((out / f"turn_{n:03d}" / "result.json").read_text()) for n in (1, 2, 3)]
    assert turns[0]["history"] == [] and turns[0]["image"] == str(a)
    assert turns[1]["history"] == [["user", "How many shapes?"], ["assistant", turns[0]["text"]]]
    assert turns[2]["image"] == str(b) and turns[2]["history"] == []  # a new image starts again
    assert all((out / f"turn_{n:03d}" / "overlay.png").is_file() for n in (1, 2, 3))
    conversation = json.loads((out / "conversation.json").read_text())["turns"]
    assert [t["prompt"] for t in conversation] == ["How many shapes?", "Segment the red circle.", "And here?"]


def test_quit_ends_and_an_earlier_conversation_needs_force(tmp_path, images, monkeypatch, capsys):
    a, _ = images
    out = tmp_path / "talk"
    assert _chat(monkeypatch, ["Hello.", "/quit", "never asked"], str(a), "--out", str(out)) == 0
    assert "1 turn(s) written" in capsys.readouterr().out
    monkeypatch.setattr(stamp.cli.chat, "build_predictor", lambda args: pytest.fail("model loaded"))
    assert _chat(monkeypatch, ["Hello."], str(a), "--out", str(out)) == 2  # refused before loading
    assert "--force" in capsys.readouterr().err
    assert _chat(monkeypatch, [], str(tmp_path / "nope.png"), "--out", str(tmp_path / "o2")) == 2
