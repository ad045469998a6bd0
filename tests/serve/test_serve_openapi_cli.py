"""The checked-in OpenAPI schema is current; the `serve` / `web` subcommands parse and dispatch."""

import json
from pathlib import Path

import pytest

from stamp.cli import build_parser
from stamp.cli import serve as serve_cli
from stamp.serve.openapi import render

DOCS = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"


def test_checked_in_openapi_schema_is_current():
    assert DOCS.is_file(), "docs/openapi.json is missing"
    current = render()
    assert json.loads(DOCS.read_text()) == json.loads(current), (
        "docs/openapi.json is stale; regenerate: stamp serve --openapi > docs/openapi.json"
    )
    schema = json.loads(current)
    body = schema["paths"]["/v1/segment"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert "text/event-stream" in schema["paths"]["/v1/segment/stream"]["post"]["responses"]["200"]["content"]
    for ref in ("SegmentJSONRequest", "SegmentMultipartRequest", "HistoryTurn", "ErrorResponse"):
        assert ref in schema["components"]["schemas"]


def test_cli_parsers_and_commands(monkeypatch):
    parser = build_parser()
    args = parser.parse_args(["serve"])
    assert (args.host, args.port, args.model, args.max_batch_size) == ("127.0.0.1", 8000, None, 8)
    args = parser.parse_args(
        ["web", "--port", "0", "--max-batch-size", "1", "--batch-wait-ms", "0", "--timeout-s", "5"]
        + ["--max-upload-mb", "2", "--max-image-pixels", "1000", "--device", "cpu", "--dtype", "float32"]
    )
    settings = serve_cli.settings_from_args(args, web=True)
    assert settings.web and settings.max_batch_size == 1 and settings.max_upload_bytes == 2 * 1024 * 1024
    assert args.run is serve_cli.run_web and parser.parse_args(["serve"]).run is serve_cli.run

    ran = {}

    def fake_run(app, host, port, log_level):
        ran.update(app=app, host=host, port=port)

    import uvicorn

    monkeypatch.setattr(uvicorn, "run", fake_run)
    assert args.run(args) == 0
    assert ran["host"] == "127.0.0.1" and ran["port"] == 0
    assert any(getattr(r, "path", None) == "/" for r in ran["app"].routes)


def test_serve_cells_sets_the_resolution(monkeypatch):
    from fastapi.testclient import TestClient

    parser = build_parser()
    args = parser.parse_args(["serve", "--cells", "8,16", "--refine", "none"])
    ran = {}
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: ran.update(app=app))
    assert args.run(args) == 0
    assert TestClient(ran["app"]).get("/v1/model").json()["image_cells"] == [8, 16]
    with pytest.raises(SystemExit):
        parser.parse_args(["serve", "--cells", "16,8"])
