"""The package's layers (README, "Design"): checked by import-linter with the contracts in pyproject.toml,
and the few values two layers both define, which must agree."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_data_and_model_agree_on_the_shared_strings():
    from stamp.data import sample
    from stamp.model import losses, tokens

    assert sample.SEG_TOKEN == tokens.SEG_TOKEN and sample.MASK_TOKEN == tokens.MASK_TOKEN
    assert sample.IGNORE_INDEX == losses.IGNORE_VALUE


def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[dev]')")
    out = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
