"""The one JSON writer of STAMP's outputs: strict JSON, an undefined number written as null.

Python's `json` writes NaN and Infinity as bare words that are not JSON (JavaScript's `JSON.parse`, jq
and most other readers reject the file). A metric that does not apply to a run (T-acc of data without
targets), a bootstrap interval of no draws or a score of an empty mask comes out as NaN, so every
document STAMP writes -- results.json of `stamp eval`, the calibration sweep, `stamp compare --json`,
result.json and summary.json of `stamp segment` / `stamp demo`, `stamp bench` reports, the HTTP API's
responses and events -- goes through `json_ready` and is dumped with `allow_nan=False`: NaN and
+-inf become null, and a non-finite number that slipped past `json_ready` fails loudly instead of
writing a file nobody can read.
"""

from __future__ import annotations

import json
import math

import numpy as np


def json_ready(obj):
    """`obj` with every NaN/+-inf float turned into None, numpy scalars and arrays into Python numbers
    and lists, tuples into lists (dict keys kept as they are)."""
    if isinstance(obj, dict):
        return {k: json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_ready(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def dumps(obj, indent: int | None = None, ensure_ascii: bool = True) -> str:
    """Strict JSON text of `obj` (`json_ready`, then `allow_nan=False`)."""
    return json.dumps(json_ready(obj), indent=indent, ensure_ascii=ensure_ascii, allow_nan=False)
