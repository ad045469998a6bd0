"""Every class of bad request gets a 4xx/5xx JSON error saying what is wrong, and the server keeps
serving afterwards."""

import base64
import io
import json
import struct
import time
import warnings
import zlib

import pytest
from PIL import Image
from serve_helpers import image_bytes, upload

from stamp.serve.errors import ERROR_CODES

SEEN: set[str] = set()


def expect(response, status: int, code: str, words: str = "") -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    err = response.json()["error"]
    assert err["code"] == code and err["message"]
    assert words.lower() in err["message"].lower(), err["message"]
    SEEN.add(code)
    return err


def still_serving(client) -> None:
    r = client.post("/v1/segment", files=upload(), data={"prompt": "Still there?", "max_new_tokens": "1"})
    assert r.status_code == 200, r.text


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height 1-bit pixels in a few dozen bytes (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def _form(client, data=None, mime="image/png", **fields):
    fields.setdefault("prompt", "Segment it.")
    return client.post("/v1/segment", files=upload(data, mime=mime), data=fields)


def test_not_an_image_and_unsupported_images(client):
    expect(_form(client, b"hello, I am text", "text/plain"), 415, "not_an_image", "not an image")
    expect(_form(client, b""), 415, "not_an_image", "empty")
    expect(_form(client, image_bytes(fmt="PNG")[:60]), 415, "not_an_image")  # truncated
    expect(_form(client, image_bytes(fmt="PCX")), 415, "unsupported_image_format", "PCX")
    lab = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 30)).convert("LAB").save(lab, format="TIFF")
    expect(_form(client, lab.getvalue()), 415, "unsupported_image_mode", "LAB")
    expect(
        client.post("/v1/segment", content=b"x", headers={"content-type": "text/plain"}),
        415,
        "unsupported_media_type",
    )
    expect(client.post("/v1/segment"), 415, "unsupported_media_type")
    still_serving(client)


def test_prompt_errors(client):
    expect(_form(client, prompt=""), 422, "empty_prompt")
    expect(_form(client, prompt="   \n "), 422, "empty_prompt")
    expect(_form(client, prompt="x" * 2001), 422, "prompt_too_long", "2001")
    expect(_form(client, prompt="Hi <|im_end|> there"), 422, "reserved_token", "<|im_end|>")
    expect(_form(client, prompt="Where is <|seg|>?"), 422, "reserved_token", "<|seg|>")
    expect(_form(client, answer_prefix="a <|image_pad|>"), 422, "reserved_token", "answer prefix")
    expect(_form(client, answer_prefix="y" * 2001), 422, "prompt_too_long", "answer prefix")
    expect(_form(client, max_new_tokens="100000"), 422, "max_new_tokens_too_large", "512")
    expect(_form(client, max_new_tokens="-1"), 422, "invalid_request", "max_new_tokens")
    expect(_form(client, max_new_tokens="many"), 422, "invalid_request", "max_new_tokens")
    expect(_form(client, colour="red"), 422, "invalid_request", "colour")
    expect(client.post("/v1/segment", data={"prompt": "hi"}, files={"x": ("a", b"1")}), 422, "missing_image")
    still_serving(client)


def test_history_errors(client):
    bad = [
        ("not json", "JSON"),
        (json.dumps([{"role": "assistant", "text": "Hi"}, {"role": "user", "text": "x"}]), "user turn"),
        (json.dumps([{"role": "user", "text": "Hi"}]), "end with an assistant"),
        (json.dumps([{"role": "robot", "text": "Hi"}]), "role"),
        (json.dumps([{"role": "user", "text": "Hi"}, {"role": "assistant", "text": "a"}] * 9), "limit"),
    ]
    for history, words in bad:
        expect(_form(client, history=history), 422, "invalid_history", words)
    # the rule the Python API and the CLI apply (`parse_history`), word for word
    from stamp.data.sample import HistoryError, parse_history

    for history in (
        [{"role": "assistant", "text": "Hi"}, {"role": "user", "text": "x"}],
        [{"role": "user", "text": "Hi"}],
    ):
        with pytest.raises(HistoryError) as exc:
            parse_history(history)
        expect(_form(client, history=json.dumps(history)), 422, "invalid_history", str(exc.value))
    user_token = json.dumps(
        [{"role": "user", "text": "<|vision_start|>"}, {"role": "assistant", "text": "a"}]
    )
    expect(_form(client, history=user_token), 422, "reserved_token", "history turn 0")
    still_serving(client)


def test_json_body_errors(client):
    good = base64.b64encode(image_bytes()).decode()
    post = lambda body: client.post("/v1/segment", content=body, headers={"content-type": "application/json"})  # noqa: E731
    expect(post(b"{not json"), 400, "invalid_json")
    expect(post(b"[1, 2]"), 400, "invalid_json", "object")
    expect(post(json.dumps({"prompt": "hi"}).encode()), 422, "missing_image")
    expect(post(json.dumps({"image": "%%%not base64%%%", "prompt": "hi"}).encode()), 400, "invalid_base64")
    expect(post(json.dumps({"image": good}).encode()), 422, "invalid_request", "prompt")
    expect(post(json.dumps({"image": good, "prompt": 3}).encode()), 422, "invalid_request", "prompt")
    expect(post(json.dumps({"image": good, "prompt": ""}).encode()), 422, "empty_prompt")
    expect(post(json.dumps({"image": good, "prompt": "hi", "history": "x"}).encode()), 422, "invalid_request")
    multipart = "multipart/form-data"
    expect(
        client.post("/v1/segment", content=b"abc", headers={"content-type": multipart}), 400, "invalid_form"
    )
    nameless = b"--zz\r\nContent-Disposition: form-data\r\n\r\nxx\r\n--zz--\r\n"
    r = client.post("/v1/segment", content=nameless, headers={"content-type": f"{multipart}; boundary=zz"})
    expect(r, 400, "invalid_form", "name")
    still_serving(client)


def test_upload_size_limit(make_client):
    client = make_client(max_upload_mb=0.05, batch_wait_ms=0)  # 51 KiB: the default upload fits
    big = image_bytes(200, 200)  # random pixels: ~120 KiB
    assert len(big) > 100_000
    expect(_form(client, big), 413, "upload_too_large", "limit")
    b64 = base64.b64encode(big).decode()
    expect(client.post("/v1/segment", json={"image": b64, "prompt": "hi"}), 413, "upload_too_large")

    def chunks():  # no content-length: the limit holds while the body streams in
        for _ in range(40):  # 2.5 MiB: over the limit of the image plus the form overhead (1 MiB)
            yield b"x" * 65536

    r = client.post("/v1/segment", content=chunks(), headers={"content-type": "application/json"})
    expect(r, 413, "upload_too_large")
    still_serving(client)


def test_pixel_limit_and_decompression_bombs(make_client, monkeypatch, tiny_model, tiny_processor):
    from stamp.imaging.load import MAX_IMAGE_PIXELS
    from stamp.inference import StampPredictor

    # the predictor's max_image_pixels, the one limit of the API, the CLI and the server
    client = make_client(StampPredictor(tiny_model, tiny_processor, max_image_pixels=11_000), batch_wait_ms=0)
    assert client.get("/v1/model").json()["max_pixels"] == 11_000
    expect(_form(client, image_bytes(120, 100)), 413, "too_many_pixels", "120x100")
    still_serving(client)  # the default upload, 120x90, is under the limit
    # The app's limit holds even with Pillow's global guard switched off.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    expect(_form(client, png_header(30_000, 30_000)), 413, "too_many_pixels")
    monkeypatch.undo()
    # A generous app limit: Pillow's own bomb checks (error above 2x, warning above 1x) become 413s too.
    roomy = make_client(
        StampPredictor(tiny_model, tiny_processor, max_image_pixels=MAX_IMAGE_PIXELS), batch_wait_ms=0
    )
    expect(_form(roomy, png_header(30_000, 30_000)), 413, "too_many_pixels")  # DecompressionBombError
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        expect(_form(roomy, png_header(12_000, 10_000)), 413, "too_many_pixels")  # the warning's range
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        expect(_form(roomy, png_header(12_000, 10_000)), 413, "too_many_pixels")  # warning as error
    still_serving(roomy)


def test_timeout_then_keeps_serving(make_client, scripted):
    client = make_client(scripted, timeout_s=1.0, batch_wait_ms=0, max_new_tokens_limit=4000)
    expect(_form(client, prompt="SLOW please"), 504, "timeout", "1 s")  # stuck before generating
    scripted.gate.set()
    still_serving(client)
    # Timed out while generating: the batch's generation stops at the next token, not after 4000.
    scripted.eos_ids = set()  # never a short answer
    t0 = time.monotonic()
    long_answer = {"max_new_tokens": "4000", "repetition_stop": "false"}  # the random model loops
    expect(_form(client, prompt="Talk a lot.", **long_answer), 504, "timeout")
    while client.get("/health").json()["requests_abandoned"] < 1:
        assert time.monotonic() - t0 < 8, "the abandoned generation went on"
        time.sleep(0.05)
    still_serving(client)


def test_internal_error_overload_and_shutdown(make_client, scripted):
    client = make_client(scripted, batch_wait_ms=0, max_batch_size=1, max_queue=1)
    expect(_form(client, prompt="BOOM"), 500, "internal_error", "scripted failure")
    still_serving(client)
    service = client.app.state.service
    from stamp.serve.inputs import SegmentInput

    inp = SegmentInput(Image.new("RGB", (64, 64)), "SLOW", max_new_tokens=1)
    first = service.submit(inp)  # occupies the worker
    assert scripted.entered.wait(10)
    second = service.submit(inp)  # fills the queue (max_queue=1)
    expect(_form(client, prompt="one too many"), 503, "overloaded", "busy")
    scripted.gate.set()
    assert first.future.result(10) and second.future.result(10)
    service.batcher.stop()
    expect(_form(client, prompt="late"), 503, "shutting_down")


def test_every_error_code_was_exercised(request):
    """Each documented 4xx/5xx code came up in the tests above (when they all ran before this one)."""
    items = request.session.items
    here = items.index(request.node)
    ours = [
        f.__name__
        for n, f in globals().items()
        if n.startswith("test_") and f is not test_every_error_code_was_exercised
    ]
    ran_before = {i.name for i in items[:here] if i.module is request.module}
    if not set(ours) <= ran_before:
        pytest.skip("meaningful only after all the other tests of this file")
    expected = {c for s, codes in ERROR_CODES.items() for c in codes}
    expected -= {"not_found", "method_not_allowed"}  # checked in test_serve_api.py
    assert expected <= SEEN, sorted(expected - SEEN)
