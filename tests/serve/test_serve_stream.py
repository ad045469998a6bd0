"""Streaming: text deltas as generated, each mask right after its <|seg|>, a final `done`."""

import json
import threading
import time

import httpx
from helpers import random_image
from serve_helpers import image_bytes, upload

from stamp.inference import StampPredictor
from stamp.inference.generation import GenerationConfig, generate
from stamp.serve.app import create_app
from stamp.serve.server import serve_in_thread
from stamp.serve.settings import ServeSettings
from stamp.serve.stream import TextStreamer, phrase_spans

PREFIX = "The cat <|seg|> and the dog is <|seg|>."


def parse_sse(text: str) -> list[tuple[str, dict]]:
    events = []
    for frame in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.split("\n"))
        events.append((lines["event"], json.loads(lines["data"])))
    return events


def test_event_order_and_agreement_with_the_plain_endpoint(client):
    fields = {"prompt": "Segment both.", "answer_prefix": PREFIX, "max_new_tokens": "6", "return_png": "true"}
    data = image_bytes(140, 100)
    r = client.post("/v1/segment/stream", files=upload(data), data=fields)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(r.text)
    kinds = [k for k, _ in events]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("done") == 1
    assert set(kinds[1:-1]) <= {"text", "mask"} and kinds.count("mask") == 2
    text = ""
    for i, (kind, payload) in enumerate(events):
        if kind == "text":
            text += payload["delta"]
        if kind == "mask":
            assert events[i - 1][0] == "text" and text.endswith("<|seg|>")  # right after its <|seg|>
            assert text.count("<|seg|>") == payload["index"] + 1
    done = events[-1][1]
    assert text == done["text"] and done["masks"] == 2 and done["batch_size"] == 1
    plain = client.post("/v1/segment", files=upload(data), data=fields).json()
    assert plain["text"] == done["text"]
    streamed = [p for k, p in events if k == "mask"]
    assert [m["phrase"] for m in streamed] == ["The cat", "the dog"]
    for got, want in zip(streamed, plain["masks"]):
        assert got == want


def test_stream_errors(make_client, scripted):
    client = make_client(scripted, timeout_s=1.0, batch_wait_ms=0)
    bad = client.post("/v1/segment/stream", files=upload(), data={"prompt": ""})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "empty_prompt"  # before the stream
    boom = parse_sse(client.post("/v1/segment/stream", files=upload(), data={"prompt": "BOOM"}).text)
    assert [k for k, _ in boom] == ["start", "error"] and boom[1][1]["error"]["code"] == "internal_error"
    slow = parse_sse(client.post("/v1/segment/stream", files=upload(), data={"prompt": "SLOW"}).text)
    assert [k for k, _ in slow] == ["start", "error"] and slow[1][1]["error"]["code"] == "timeout"
    scripted.gate.set()
    ok = parse_sse(
        client.post("/v1/segment/stream", files=upload(), data={"prompt": "Hi", "max_new_tokens": "2"}).text
    )
    assert ok[-1][0] == "done"


class MaskGatedPredictor(StampPredictor):
    """Generation pauses after each mask until `gate` is set: the mask must reach the client first."""

    def __init__(self, model, processor):
        super().__init__(model, processor)
        self.gate = threading.Event()

    def chat_batch(self, requests, *, on_event=None, **kwargs):
        def hook(kind, row, *payload):
            on_event(kind, row, *payload)
            if kind == "mask":
                self.gate.wait(5)

        return super().chat_batch(requests, on_event=hook, **kwargs)


def test_masks_reach_a_real_client_while_generation_is_still_running(tiny_model, tiny_processor):
    predictor = MaskGatedPredictor(tiny_model, tiny_processor)
    app = create_app(predictor, ServeSettings(batch_wait_ms=0))
    fields = {"prompt": "Segment it.", "answer_prefix": "It is <|seg|> here", "max_new_tokens": "2"}
    kinds, waited = [], None
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        t0 = time.monotonic()
        with http.stream("POST", "/v1/segment/stream", files=upload(), data=fields) as r:
            assert r.status_code == 200
            for line in r.iter_lines():
                if line.startswith("event: "):
                    kinds.append(line[7:])
                    if kinds[-1] == "mask":
                        waited = time.monotonic() - t0
                        predictor.gate.set()  # only now may generation go on
    assert kinds[0] == "start" and kinds[-1] == "done" and "mask" in kinds
    assert waited is not None and waited < 4.0  # not held back until the answer was complete
    assert kinds.index("mask") < len(kinds) - 2  # text followed the mask: the answer went on after it


def test_generate_reports_each_seg_token_then_its_mask(tiny_model, tiny_processor):
    pred = StampPredictor(tiny_model, tiny_processor)
    proc = tiny_processor
    req = pred._request(*pred._encode(random_image(100, 120))[:2], "Go", None, "a <|seg|> b <|seg|>")
    seen = []
    out = generate(
        tiny_model,
        [req],
        GenerationConfig(max_new_tokens=3),
        pred.pad_id,
        pred.eos_ids,
        on_event=lambda *e: seen.append(e),
    )[0]
    tokens = [e[2] for e in seen if e[0] == "token"]
    assert tokens == out.token_ids
    seg = proc.seg_token_id
    for i, e in enumerate(seen):
        if e[0] == "mask":
            assert seen[i - 1][:3] == ("token", 0, seg)
            assert e[3].shape == out.mask_logits[e[2]].shape
    assert [e[2] for e in seen if e[0] == "mask"] == [0, 1]


def test_text_streamer_never_splits_a_character(tiny_model, tiny_processor):
    proc = tiny_processor
    text = "é€😀 ok"
    ids = proc._text_ids(text)
    assert len(ids) > len(text)  # bytes, not characters
    streamer = TextStreamer(proc.decode, proc.seg_token_id)
    deltas = [streamer.push(i) for i in ids]
    assert all("\ufffd" not in d for d in deltas) and "".join(deltas) + streamer.flush() == text
    # A <|seg|> after half a character flushes what came before it (the bytes stay invalid for good).
    streamer = TextStreamer(proc.decode, proc.seg_token_id)
    assert streamer.push(proc._text_ids("é")[0]) == ""
    assert streamer.push(proc.seg_token_id) == "\ufffd<|seg|>"


def test_phrase_spans():
    text = "There are two: the ellipse <|seg|> and the large pentagon <|seg|>. Also <|seg|>"
    spans = phrase_spans(text)
    assert [p for p, _, _ in spans] == ["the ellipse", "the large pentagon", ""]
    for phrase, start, end in spans:
        assert text[start:end] == phrase
    assert phrase_spans("Sure, all objects left of it are <|seg|>.")[0][0] == "all objects left of it"
    assert phrase_spans("no masks") == []


def test_streamed_masks_are_refined_once_each(make_client, tiny_model, tiny_processor):
    """The stream refines each mask as it goes out; the worker must not refine them again."""
    from stamp.refine.base import GuidedRefiner

    class Counting(GuidedRefiner):
        calls = 0

        def refine(self, *args, **kwargs):
            Counting.calls += 1
            return super().refine(*args, **kwargs)

    client = make_client(StampPredictor(tiny_model, tiny_processor, refine=Counting()), batch_wait_ms=0)
    fields = {"prompt": "Segment both.", "answer_prefix": PREFIX, "max_new_tokens": "2"}
    events = parse_sse(
        client.post("/v1/segment/stream", files=upload(image_bytes(140, 100)), data=fields).text
    )
    assert [k for k, _ in events].count("mask") == 2
    assert Counting.calls == 2
    assert "refine" in events[-1][1]["timings"]
    Counting.calls = 0
    plain = client.post("/v1/segment", files=upload(image_bytes(140, 100)), data=fields).json()
    assert len(plain["masks"]) == 2 and Counting.calls == 2  # the plain endpoint refines in the worker


def test_a_client_that_hangs_up_mid_stream_frees_its_slot(tiny_model, tiny_processor):
    """A streaming client hangs up after its first mask while generation is held: its batch is
    abandoned (the generation stops early), the queue drains, and the next clients are answered."""
    predictor = MaskGatedPredictor(tiny_model, tiny_processor)
    app = create_app(predictor, ServeSettings(batch_wait_ms=0, max_batch_size=1))
    fields = {"prompt": "Segment it.", "answer_prefix": "It is <|seg|> here", "max_new_tokens": "40"}
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as http:
        with http.stream("POST", "/v1/segment/stream", files=upload(), data=fields) as r:
            for line in r.iter_lines():
                if line == "event: mask":
                    break  # hang up here, generation still held at its first mask
        predictor.gate.set()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            stats = http.get("/health").json()
            if stats["requests_abandoned"] + stats["requests_done"] >= 1 and stats["queue_depth"] == 0:
                break
            time.sleep(0.05)
        assert stats["queue_depth"] == 0 and stats["requests_abandoned"] == 1, stats
        follow = {"prompt": "Segment it.", "answer_prefix": "It is <|seg|>", "max_new_tokens": "2"}
        answers = [http.post("/v1/segment", files=upload(), data=follow) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert http.get("/health").json()["queue_depth"] == 0
