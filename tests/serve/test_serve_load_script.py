"""The load-test script runs end to end on loopback (a tiny budget) and reports what it promises."""

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "load_test.py"


def _load():
    spec = importlib.util.spec_from_file_location("load_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_load_test_script_smoke(tmp_path, capsys):
    load_test = _load()
    out = tmp_path / "load.json"
    argv = ["--duration", "1", "--max-requests", "6", "--concurrency", "3", "--warmup", "1"]
    argv += ["--max-new-tokens", "2", "--image-size", "64", "48", "--json", str(out)]
    assert load_test.main(argv) == 0
    report = json.loads(out.read_text())
    assert [r["mode"] for r in report["results"]] == ["batched", "unbatched"]
    for r in report["results"]:
        assert r["errors"] == 0 and 1 <= r["requests_ok"] <= 6
        assert set(r["latency_ms"]) == {"p50", "p95", "p99", "mean"} and r["throughput_rps"] > 0
    assert report["results"][1]["max_batch_seen"] == 1
    assert "req/s" in capsys.readouterr().out


def test_load_test_refuses_non_loopback_urls():
    with pytest.raises(SystemExit):
        _load().parse_args(["--url", "http://example.com:8000"])
