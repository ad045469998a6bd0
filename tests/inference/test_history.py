"""One history format and one rule (`parse_history`) for the Python API, the command line and the
server: `Turn`s, (role, text) pairs or the HTTP API's {"role", "text"} dicts; user first, assistant last."""

import json

import pytest
from helpers import random_image

from stamp.cli import main
from stamp.data.sample import HistoryError, Turn, parse_history
from stamp.inference import ChatRequest, StampPredictor

TURNS = [Turn("user", "Hi."), Turn("assistant", "Hello.")]
BAD = [  # (history, words of the error): the same list the server test refuses
    ([{"role": "assistant", "text": "Hi"}, {"role": "user", "text": "x"}], "must be a user turn"),
    ([{"role": "user", "text": "Hi"}], "end with an assistant"),
    ([{"role": "robot", "text": "Hi"}, {"role": "assistant", "text": "a"}], "role"),
    ([{"role": "user", "text": "Hi", "extra": 1}, {"role": "assistant", "text": "a"}], "keys"),
    ([{"role": "user", "text": 3}, {"role": "assistant", "text": "a"}], "string"),
    ("user: hi", "list"),
]


def test_every_form_gives_the_same_turns():
    dicts = [{"role": t.role, "text": t.text} for t in TURNS]
    pairs = [(t.role, t.text) for t in TURNS]
    assert parse_history(TURNS) == parse_history(dicts) == parse_history(pairs) == TURNS
    assert parse_history(None) == parse_history([]) == []
    for bad, words in BAD:
        with pytest.raises(HistoryError, match=words):
            parse_history(bad)


def test_the_predictor_takes_the_http_apis_history_and_refuses_what_the_server_refuses(
    tiny_model, tiny_processor
):
    pred = StampPredictor(tiny_model, tiny_processor)
    pred.set_image(random_image(96, 96, 3))
    dicts = [{"role": t.role, "text": t.text} for t in TURNS]
    a = pred.chat("And now?", dicts, max_new_tokens=3)
    b = pred.chat("And now?", [(t.role, t.text) for t in TURNS], max_new_tokens=3)
    assert a.token_ids == b.token_ids
    for bad, words in BAD:
        with pytest.raises(ValueError, match=words):
            pred.chat("And now?", bad, max_new_tokens=1)
        with pytest.raises(ValueError, match=words):
            pred.chat_batch([ChatRequest(random_image(64, 64, 1), "And now?", bad)])


def test_the_cli_takes_the_same_history(tmp_path, capsys):
    img = tmp_path / "in.png"
    random_image(64, 80).save(img)
    history = json.dumps([{"role": t.role, "text": t.text} for t in TURNS])
    (tmp_path / "h.json").write_text(history)
    base = ["segment", str(img), "--prompt", "And now?", "--max-new-tokens", "2"]
    assert main(base + ["--history", history, "--out", str(tmp_path / "a")]) == 0
    assert main(base + ["--history", str(tmp_path / "h.json"), "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / d / "result.json").read_text()) for d in "ab")
    assert a["text"] == b["text"]
    for bad, words in BAD[:2] + [("not json", "JSON list")]:
        with pytest.raises(SystemExit) as exc:
            main(base + ["--history", bad if isinstance(bad, str) else json.dumps(bad), "--out", "x"])
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert words in err and len([ln for ln in err.splitlines() if "error:" in ln]) == 1, err
