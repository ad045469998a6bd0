"""Fixtures: tiny data sets in each real on-disk format (writers in datafixtures.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datafixtures import expected_coco_masks, write_coco_root


@pytest.fixture()
def coco_root(tmp_path: Path) -> Path:
    """A data root with refcoco (refs(unc).p), refcocog (refs(umd).p), grefcoco and COCO images."""
    return write_coco_root(tmp_path)


@pytest.fixture()
def expected_masks() -> dict[int, np.ndarray]:
    """ann id -> expected mask of the COCO fixture."""
    return expected_coco_masks()
