"""Print the API's OpenAPI schema: `python -m stamp.serve.openapi > docs/openapi.json`.

The schema does not depend on the model or the settings; the tiny random model stands in.
"""

from __future__ import annotations

import json
import sys


def openapi_schema() -> dict:
    """The schema of `create_app` with default settings."""
    from stamp.model.modeling import StampModel
    from stamp.serve.app import create_app

    return create_app(StampModel.tiny(seed=0)).openapi()


def render() -> str:
    """The schema as the checked-in docs/openapi.json text."""
    return json.dumps(openapi_schema(), indent=2, ensure_ascii=False) + "\n"


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
