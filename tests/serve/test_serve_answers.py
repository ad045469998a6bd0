"""Honest answers over HTTP: each response and SSE `done` says why its answer ended; a request may turn
repetition stopping off; /v1/model says when the bundled model is in use; the predictor's token bound
refuses a long request with 422 before it reaches the model."""

import base64
import json

import pytest
from helpers import LoopingHead
from serve_helpers import FORCE, image_bytes, upload

from stamp.inference import StampPredictor
from stamp.inference.generation import REPEAT_MIN_TOKENS
from stamp.tiny import build_tiny_model


def _events(text: str) -> list[tuple[str, dict]]:
    out = []
    for frame in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        out.append((lines["event"], json.loads(lines["data"])))
    return out


@pytest.fixture
def looping_client(make_client):
    model, processor = build_tiny_model(seed=0)
    model.lm_head = LoopingHead(model.lm_head, processor._text_ids("x")[0])
    return make_client(StampPredictor(model, processor), batch_wait_ms=0)


def test_finish_reason_in_the_response_and_the_done_event(looping_client):
    client = looping_client
    fields = {"prompt": "Talk.", "max_new_tokens": "100"}
    stopped = client.post("/v1/segment", files=upload(), data=fields).json()
    assert stopped["finish_reason"] == "repetition" and stopped["text"] == "x" * REPEAT_MIN_TOKENS
    ran_on = client.post("/v1/segment", files=upload(), data={**fields, "repetition_stop": "false"}).json()
    assert ran_on["finish_reason"] == "length" and ran_on["text"] == "x" * 100
    forced = client.post(
        "/v1/segment", files=upload(), data={"prompt": "Hi", "answer_prefix": FORCE, "max_new_tokens": "0"}
    ).json()
    assert forced["finish_reason"] == "length"
    events = _events(client.post("/v1/segment/stream", files=upload(), data=fields).text)
    assert events[-1][0] == "done" and events[-1][1]["finish_reason"] == "repetition"
    body = {"image": base64.b64encode(image_bytes()).decode(), "prompt": "Talk.", "max_new_tokens": 40}
    as_json = client.post("/v1/segment", json={**body, "repetition_stop": False}).json()
    assert as_json["finish_reason"] == "length" and len(as_json["text"]) == 40


def test_model_info_says_bundled(make_client, tiny_model):
    info = make_client(batch_wait_ms=0).get("/v1/model").json()
    assert info["bundled"] is False and info["note"] is None and info["max_prompt_tokens"] == 8192
    from stamp.model.loading import shipped_model_names
    from stamp.model.modeling import StampModel

    if "tiny-synth" not in shipped_model_names():
        pytest.skip("no bundled model in this installation")
    info = (
        make_client(StampPredictor(StampModel.from_pretrained("tiny-synth")), batch_wait_ms=0)
        .get("/v1/model")
        .json()
    )
    assert info["bundled"] is True and "synthetic shapes" in info["note"] and "--model" in info["note"]


def test_token_bound_is_a_422_before_the_model(make_client, tiny_model, tiny_processor):
    pred = StampPredictor(tiny_model, tiny_processor, max_prompt_tokens=40)
    client = make_client(pred, batch_wait_ms=0)
    assert client.get("/v1/model").json()["max_prompt_tokens"] == 40
    prompt = "Please segment the red circle next to the square."  # under 2000 characters, over 40 tokens
    for path in ("/v1/segment", "/v1/segment/stream"):
        r = client.post(path, files=upload(), data={"prompt": prompt})
        assert r.status_code == 422 and r.headers["content-type"].startswith("application/json")
        err = r.json()["error"]
        assert err["code"] == "prompt_too_long" and "40 tokens" in err["message"]
    history = json.dumps([{"role": "user", "text": "Hi " * 20}, {"role": "assistant", "text": "Hello."}])
    r = client.post("/v1/segment", files=upload(), data={"prompt": "Go.", "history": history})
    assert r.status_code == 422 and r.json()["error"]["code"] == "prompt_too_long"
    assert client.get("/health").json()["requests_done"] == 0  # nothing reached the model
    ok = client.post("/v1/segment", files=upload(), data={"prompt": "Go.", "max_new_tokens": "1"})
    assert ok.status_code == 200, ok.text
