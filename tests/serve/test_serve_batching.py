"""Dynamic batching: concurrent clients share forward passes and get the answers they would alone."""

import asyncio
import json
import threading
import time

import httpx
from serve_helpers import FORCE, ScriptedPredictor, image_bytes

from stamp.inference import ChatRequest, StampPredictor
from stamp.serve.app import create_app
from stamp.serve.batching import Batcher
from stamp.serve.settings import ServeSettings

HISTORY = json.dumps([{"role": "user", "text": "Hi."}, {"role": "assistant", "text": "Hello."}])
REQUESTS = [  # (path, fields, image seed): mixed sizes, a history, a stream, different budgets
    ("/v1/segment", {"prompt": "Segment the box.", "answer_prefix": FORCE, "max_new_tokens": "3"}, 1),
    ("/v1/segment", {"prompt": "A longer question about it?", "max_new_tokens": "5"}, 2),
    (
        "/v1/segment",
        {"prompt": "And this?", "history": HISTORY, "max_new_tokens": "0", "answer_prefix": "x"},
        3,
    ),
    ("/v1/segment/stream", {"prompt": "Stream it.", "answer_prefix": FORCE, "max_new_tokens": "2"}, 4),
]


async def _send_all(app, requests) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", timeout=60) as http:

        async def one(path, fields, seed):
            files = {"image": ("a.png", image_bytes(90 + 20 * seed, 80, seed=seed), "image/png")}
            return await http.post(path, files=files, data=fields)

        return await asyncio.gather(*(one(*r) for r in requests))


def _texts(responses) -> list[str]:
    out = []
    for r in responses:
        assert r.status_code == 200, r.text
        if r.headers["content-type"].startswith("text/event-stream"):
            done = [f for f in r.text.split("\n\n") if f.startswith("event: done")][0]
            out.append(json.loads(done.split("data: ", 1)[1])["text"])
        else:
            out.append(r.json()["text"])
    return out


def _run(app, requests):
    try:
        return asyncio.run(_send_all(app, requests))
    finally:
        app.state.service.batcher.stop()


def test_concurrent_requests_share_one_batch_and_match_single_answers(tiny_model, tiny_processor):
    batched = create_app(
        StampPredictor(tiny_model, tiny_processor), ServeSettings(max_batch_size=4, batch_wait_ms=2000)
    )
    together = _run(batched, REQUESTS)
    stats = batched.state.service.batcher.stats()
    assert stats["max_batch_seen"] == 4 and stats["batches_run"] == 1 and stats["requests_done"] == 4
    assert [r.json()["batch_size"] for r in together if r.headers["content-type"] == "application/json"] == [
        4
    ] * 3

    alone = create_app(
        StampPredictor(tiny_model, tiny_processor), ServeSettings(max_batch_size=1, batch_wait_ms=0)
    )
    singles = _run(alone, REQUESTS)
    stats = alone.state.service.batcher.stats()
    assert stats["max_batch_seen"] == 1 and stats["batches_run"] == 4
    assert _texts(together) == _texts(singles)
    assert _texts(together)[2] == "x"  # its own budget (0 free tokens) held inside the batch
    for a, b in zip(together[:2], singles[:2]):
        assert [m["rle"] for m in a.json()["masks"]] == [m["rle"] for m in b.json()["masks"]]


def test_a_failing_request_does_not_sink_its_batch(tiny_model, tiny_processor):
    predictor = ScriptedPredictor(tiny_model, tiny_processor)
    app = create_app(predictor, ServeSettings(max_batch_size=3, batch_wait_ms=2000))
    reqs = [
        ("/v1/segment", {"prompt": "fine", "max_new_tokens": "2"}, 1),
        ("/v1/segment", {"prompt": "BOOM", "max_new_tokens": "2"}, 2),
        ("/v1/segment", {"prompt": "fine too", "max_new_tokens": "2"}, 3),
    ]
    responses = _run(app, reqs)
    assert [r.status_code for r in responses] == [200, 500, 200]
    assert predictor.batch_sizes == [3, 1, 1, 1]  # the batch, then each request alone
    stats = app.state.service.batcher.stats()
    assert stats["requests_failed"] == 1 and stats["requests_done"] == 2


def test_batcher_skips_cancelled_jobs_and_respects_the_size_limit():
    seen, release = [], threading.Event()

    def run_batch(reqs, on_event):
        seen.append([r.prompt for r in reqs])
        if reqs[0].prompt == "block":
            release.wait(10)
        for row in range(len(reqs)):
            on_event("token", row, 7)
        return [r.prompt.upper() for r in reqs]

    batcher = Batcher(run_batch, max_batch_size=2, batch_wait_s=0.0, max_queue=10)
    try:
        events = []
        blocker = batcher.submit(ChatRequest(None, "block"))
        while not seen:
            time.sleep(0.01)
        jobs = [batcher.submit(ChatRequest(None, p), on_event=lambda *e: events.append(e)) for p in "abcde"]
        jobs[1].cancel()  # "b" gives up before its batch starts
        release.set()
        assert blocker.future.result(10) == "BLOCK"
        results = [j.future.result(10) for j in jobs if j is not jobs[1]]
        assert results == ["A", "C", "D", "E"] and jobs[1].future.cancelled()
        assert seen[1:] == [["a", "c"], ["d", "e"]]  # "b" skipped; batches of at most 2
        assert events == [("token", 7)] * 4
        assert batcher.stats()["max_batch_seen"] == 2
    finally:
        release.set()
        batcher.stop()
