"""HTTP serving: `create_app(predictor_or_model, ServeSettings(...))` (FastAPI), the dynamic batcher,
run by the `stamp serve` / `stamp web` commands (`stamp.cli.serve`).

Needs the `serve` extra (fastapi, uvicorn, python-multipart); importing this package does not.
"""

from __future__ import annotations

from stamp.serve.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]


def __getattr__(name: str):
    if name == "create_app":
        from stamp.serve.app import create_app

        return create_app
    raise AttributeError(f"module 'stamp.serve' has no attribute {name!r}")
