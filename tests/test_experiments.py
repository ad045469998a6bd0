"""The ablation runner end to end on a tiny budget: trains, resumes/skips, evaluates, reports."""

import importlib.util
from pathlib import Path

from tests_train_overrides import TINY_MODEL

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "ablations.py"


def _load():
    spec = importlib.util.spec_from_file_location("ablations", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_ablation_runner_smoke(tmp_path, monkeypatch):
    mod = _load()
    # shrink every run to the tiny test model and skip the long evaluations
    monkeypatch.setattr(mod, "RUNS", {k: (v[0] + TINY_MODEL, v[1]) for k, v in list(mod.RUNS.items())[:2]})
    monkeypatch.setattr(mod, "FULL_EXTRA", mod.FULL_EXTRA[:2])
    assert mod.main(["--out", str(tmp_path), "--steps", "2", "--eval-limit", "2"]) == 0
    assert (tmp_path / "full.json").is_file() and (tmp_path / "no_hybrid.json").is_file()
    before = (tmp_path / "full.json").stat().st_mtime
    assert mod.main(["--out", str(tmp_path), "--steps", "2", "--eval-limit", "2", "--only", "full"]) == 0
    assert (tmp_path / "full.json").stat().st_mtime == before  # finished runs are skipped
    table = mod.report(tmp_path)
    assert "| full |" in table and "| no_hybrid |" in table and "val_guided" in table
