"""Every endpoint of the HTTP API, through the ASGI test client, with the tiny random model."""

import base64
import io
import json

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from serve_helpers import FORCE, image_bytes, upload

from stamp.inference import StampPredictor


def test_health_and_model(client):
    health = client.get("/health")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok" and body["batches_run"] == 0 and body["queue_depth"] == 0
    info = client.get("/v1/model").json()
    assert info["family"] == "qwen2_vl" and info["random_weights"] is True
    assert info["seg_token"] == "<|seg|>" and info["parameters"] > 0
    assert info["max_upload_bytes"] == 10 * 1024 * 1024 and info["image_cells"] == [4, 64]


def test_segment_multipart_matches_the_predictor(client, tiny_model, tiny_processor):
    data = image_bytes(150, 100)
    r = client.post(
        "/v1/segment",
        files=upload(data),
        data={"prompt": "Segment the dog.", "answer_prefix": FORCE, "max_new_tokens": "3", "return_png": "1"},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    pred = StampPredictor(tiny_model, tiny_processor)
    pred.set_image(Image.open(io.BytesIO(data)))
    want = pred.chat("Segment the dog.", answer_prefix=FORCE, max_new_tokens=3)
    assert body["text"] == want.text and body["text"].startswith(FORCE)
    assert len(body["masks"]) == len(want.masks) >= 1
    m, w = body["masks"][0], want.masks[0]
    # "it" names nothing: the mask is named by the request; its span is still the answer's word
    assert m["index"] == 0 and m["phrase"] == "the dog" and m["color"] == "#e69f00"
    assert body["text"][m["span"][0] : m["span"][1]] == "it"
    # the response is the predictor's own record (`StampResult.to_dict()`), plus id, image, batch size
    record = want.to_dict()
    timed = ("timings", "batch", "masks")
    assert {k: body[k] for k in record if k not in timed} == {
        k: v for k, v in record.items() if k not in timed
    }
    assert body["batch"]["size"] == body["batch_size"] == 1
    assert [{k: v for k, v in e.items() if k != "png"} for e in body["masks"]] == record["masks"]
    assert m["area"] == w.area and m["bbox"] == w.bbox and m["grid"] == list(w.patch_logits.shape)
    rle = dict(m["rle"], counts=m["rle"]["counts"].encode())
    assert np.array_equal(mask_utils.decode(rle).astype(bool), w.mask)
    png = np.asarray(Image.open(io.BytesIO(base64.b64decode(m["png"]))))
    assert np.array_equal(png > 127, w.mask)
    assert body["image"] == {"width": 150, "height": 100} and body["batch_size"] == 1
    assert {"queue", "vision", "prefill", "decode", "mask", "postprocess", "total"} <= set(body["timings"])


def test_segment_json_base64_and_data_url_and_history(client):
    b64 = base64.b64encode(image_bytes(fmt="JPEG")).decode()
    plain = client.post("/v1/segment", json={"image": b64, "prompt": "What is it?", "max_new_tokens": 4})
    assert plain.status_code == 200, plain.text
    assert plain.json()["masks"] == [] or "<|seg|>" in plain.json()["text"]
    history = [{"role": "user", "text": "Hi."}, {"role": "assistant", "text": "Hello <|seg|>."}]
    body = {
        "image": f"data:image/jpeg;base64,{b64}",
        "prompt": "And now?",
        "history": history,
        "answer_prefix": "Here <|seg|> and <|seg|>",
        "max_new_tokens": 0,
    }
    r = client.post("/v1/segment", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["text"] == "Here <|seg|> and <|seg|>" and len(out["masks"]) == 2
    assert [m["phrase"] for m in out["masks"]] == ["And now", "And now"]  # named by the request
    assert [m["color"] for m in out["masks"]] == ["#e69f00", "#56b4e9"]
    assert out["masks"][0]["png"] is None
    form = client.post(
        "/v1/segment",
        files=upload(),
        data={"prompt": "And now?", "history": json.dumps(history), "max_new_tokens": "2"},
    )
    assert form.status_code == 200, form.text


def test_grey_palette_and_alpha_images_are_accepted(client):
    for mode in ("L", "P", "RGBA", "I;16"):
        im = Image.new(mode, (64, 48))
        buf = io.BytesIO()
        im.save(buf, format="PNG")
        r = client.post(
            "/v1/segment", files=upload(buf.getvalue()), data={"prompt": "Hi", "max_new_tokens": "1"}
        )
        assert r.status_code == 200, (mode, r.text)
        assert r.json()["image"] == {"width": 64, "height": 48}


def test_samples_root_openapi_and_unknown_routes(client):
    samples = client.get("/v1/samples").json()
    assert len(samples["samples"]) >= 3 and samples["prompts"]
    first = samples["samples"][0]
    png = client.get(first["url"])
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (first["width"], first["height"])
    missing = client.get("/v1/samples/nope.png")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert client.get("/").json()["openapi"] == "/openapi.json"  # API mode: no page
    schema = client.get("/openapi.json").json()
    assert {"/v1/segment", "/v1/segment/stream", "/health", "/v1/model"} <= set(schema["paths"])
    nowhere = client.get("/v2/nothing")
    assert nowhere.status_code == 404 and nowhere.json()["error"]["code"] == "not_found"
    wrong = client.get("/v1/segment")
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"


def test_web_mode_serves_the_page(make_client):
    client = make_client(web=True)
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'src="/static/app.js"' in page.text and "http" not in page.text.replace("http-equiv", "")
    js = client.get("/static/app.js")
    assert js.status_code == 200 and "/v1/segment/stream" in js.text
    assert client.get("/static/style.css").status_code == 200


def test_health_counts_requests(client):
    for _ in range(2):
        assert client.post(
            "/v1/segment", files=upload(), data={"prompt": "Hi", "max_new_tokens": "1"}
        ).is_success
    health = client.get("/health").json()
    assert health["requests_done"] == 2 and health["batches_run"] == 2 and health["max_batch_seen"] == 1
    assert health["batch_sizes"] == {"1": 2} and health["mean_batch_size"] == 1.0
