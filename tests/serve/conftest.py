"""Fixtures of the serving tests: apps around the tiny random model."""

import pytest

pytest.importorskip("fastapi", reason="the serve extra (fastapi) is not installed")
pytest.importorskip("httpx", reason="httpx (FastAPI's test client) is not installed")

from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import ScriptedPredictor  # noqa: E402

from stamp.inference import StampPredictor  # noqa: E402
from stamp.serve.app import create_app  # noqa: E402
from stamp.serve.settings import ServeSettings  # noqa: E402


@pytest.fixture
def make_client(tiny_model, tiny_processor):
    """make_client(**settings) -> a started TestClient (closed, batcher stopped, at teardown)."""
    opened = []

    def make(predictor=None, **settings):
        app = create_app(predictor or StampPredictor(tiny_model, tiny_processor), ServeSettings(**settings))
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        opened.append((client, predictor))
        return client

    yield make
    for client, predictor in opened:
        if isinstance(predictor, ScriptedPredictor):
            predictor.gate.set()
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client):
    return make_client(batch_wait_ms=0)


@pytest.fixture
def scripted(tiny_model, tiny_processor):
    return ScriptedPredictor(tiny_model, tiny_processor)
