"""The API returns the shared mask record; /docs works offline; a busy port is a one-line error."""

import socket

import pytest
from serve_helpers import image_bytes, upload

from stamp.cli import main
from stamp.outputs.records import MASK_RECORD_KEYS


def test_api_masks_are_the_shared_record(client):
    r = client.post(
        "/v1/segment",
        files=upload(image_bytes(64, 48)),
        data={"prompt": "Find it.", "answer_prefix": "The red circle <|seg|>", "max_new_tokens": "1"},
    )
    assert r.status_code == 200, r.text
    record = r.json()["masks"][0]
    assert set(record) == set(MASK_RECORD_KEYS) | {"png"}  # the CLI's result.json, plus the optional PNG
    assert record["phrase"] == "The red circle" and record["file"] is None and record["png"] is None


def test_docs_page_lists_every_endpoint_without_outside_assets(client):
    r = client.get("/docs")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    for path in ("/v1/segment", "/v1/segment/stream", "/health", "/v1/model", "/v1/samples"):
        assert f"<code>{path}</code>" in page, path
    assert "MaskResult" in page and "/openapi.json" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page  # works offline
    assert client.get("/").json()["docs"] == "/docs"


def test_serve_on_a_busy_port_is_one_line_exit_2_before_the_model(monkeypatch, capsys):
    import stamp.processing

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the port was checked")

    monkeypatch.setattr(stamp.processing, "load_model_and_processor", refuse)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already in use" in err and "http://" not in err


@pytest.mark.parametrize("host", ["no-such-host.invalid"])
def test_serve_on_an_unknown_address_is_one_line(host, capsys):
    assert main(["serve", "--host", host, "--port", "0"]) == 2
    assert capsys.readouterr().err.startswith("stamp: error: cannot listen on")
