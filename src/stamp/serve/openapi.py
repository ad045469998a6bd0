"""The API's OpenAPI schema, as `stamp serve --openapi > docs/openapi.json` prints it.

The schema does not depend on the model or the settings; the tiny random model stands in.
"""

from __future__ import annotations

import json


def openapi_schema() -> dict:
    """The schema of `create_app` with default settings."""
    from stamp.inference import StampPredictor
    from stamp.serve.app import create_app
    from stamp.tiny import build_tiny_model

    return create_app(StampPredictor(*build_tiny_model(seed=0))).openapi()


def render() -> str:
    """The schema as the checked-in docs/openapi.json text."""
    return json.dumps(openapi_schema(), indent=2, ensure_ascii=False) + "\n"
