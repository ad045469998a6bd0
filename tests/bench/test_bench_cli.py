"""`stamp bench --quick`: runs in seconds on the tiny model; the JSON has the documented schema and its
ratios agree with its milliseconds. No timing assertions."""

import argparse
import json

import pytest
import torch

from stamp.bench.report import render, write_json
from stamp.bench.runner import evaluate_targets
from stamp.cli import main as stamp_main
from stamp.cli.bench import add_parser


def main(argv):
    return stamp_main(["bench", *argv])


NUMBER = (int, float)


@pytest.fixture(scope="module")
def quick_doc(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    threads = str(torch.get_num_threads())
    argv = ["--quick", "--device", "cpu", "--threads", threads, "--dtypes", "fp32,bf16", "--json", str(out)]
    assert main(argv) == 0
    return json.loads(out.read_text()), out


def test_schema_top_level(quick_doc):
    doc, _ = quick_doc
    assert doc["schema"] == "stamp-bench/1"
    for key in (
        "command",
        "machine",
        "model",
        "settings",
        "matmul",
        "mask_pass",
        "request",
        "batch",
        "targets",
    ):
        assert key in doc
    for key in ("date", "cpu", "devices", "torch", "torch_threads", "load_average_start"):
        assert key in doc["machine"]
    assert doc["model"]["name"] == "tiny" and doc["model"]["random_weights"] is True
    assert {m["dtype"] for m in doc["matmul"]} == {"float32", "bfloat16"}


def test_mask_pass_records(quick_doc):
    doc, _ = quick_doc
    recs = doc["mask_pass"]
    assert {(r["n"], r["dtype"]) for r in recs} == {(n, d) for n in (16, 64) for d in ("fp32", "bf16")}
    for r in recs:
        assert r["device"] == "cpu"
        for key in (
            "stamp_ms",
            "no_cache_ms",
            "autoregressive_ms",
            "ar_ratio",
            "cache_ratio",
            "flops_fraction",
            "peak_mem_mb",
        ):
            assert isinstance(r[key], NUMBER) and r[key] >= 0, key
        assert r["grid"][0] * r["grid"][1] == r["n"]
        assert r["ar_ratio"] == pytest.approx(r["autoregressive_ms"] / r["stamp_ms"], rel=1e-3)
        assert r["cache_ratio"] == pytest.approx(r["no_cache_ms"] / r["stamp_ms"], rel=1e-3)
        assert r["flops_fraction"] == pytest.approx(r["mask_pass_gflops"] / r["matmul_gflops"], rel=1e-6)
        # the ratio at the matmul rate: what the measured one becomes at a FLOP fraction of 1
        assert r["ar_ratio_bound"] == pytest.approx(r["ar_ratio"] / r["flops_fraction"], rel=1e-3)
        assert r["stamp_ms"] == pytest.approx(r["timings"]["stamp"]["median_ms"], abs=1e-3)
        t = r["timings"]["stamp"]
        assert t["min_ms"] <= t["median_ms"] <= t["max_ms"]
        if r["dtype"] == "fp32":
            assert r["max_abs_diff"] <= 1e-4
        assert r["autoregressive_scaled"] is False and r["autoregressive_steps_measured"] == r["n"]
        assert 0 < r["pass_matmul_fraction"] and r["pass_matmul_gflops"] > 0


def test_request_and_batch_records(quick_doc):
    doc, _ = quick_doc
    assert [r["dtype"] for r in doc["request"]] == ["fp32", "bf16"]
    for r in doc["request"]:
        first, second = r["first_query_ms"], r["second_query_ms"]
        for stage in ("image_load", "vision", "prefill", "decode", "mask", "postprocess", "refine", "total"):
            assert isinstance(first[stage], NUMBER) and isinstance(second[stage], NUMBER)
        assert first["vision"] > 0
        assert second["vision"] == 0 and r["second_query_vision_calls"] == 0  # the vision tower is skipped
        assert r["masks_per_request"] >= 1
        assert r["decode_ms_per_token"] > 0 and r["image_side"] is None
        # each stage against its bound at this run's own matmul rate and bandwidth
        ref = r["bounds_reference"]
        assert ref["matmul_gflops"] > 0 and ref["bandwidth_gbs"] > 0
        assert ref["matmul_dtype"] == {"fp32": "float32", "bf16": "bfloat16"}[r["dtype"]]
        assert list(r["stages"]) == ["vision", "prefill", "decode", "mask"]
        for name, st in r["stages"].items():
            assert st["ms"] == first[name] and st["gflop"] > 0 and st["bound_ms"] > 0
            assert st["share"] == pytest.approx(st["bound_ms"] / st["ms"])
        assert r["stages"]["decode"]["gbyte"] > 0 and r["stages"]["decode"]["bound_by"] == "bandwidth"
        geometry = r["stages_geometry"]
        assert geometry["patches"] == 4 * r["cells"] and geometry["prompt_tokens"] > r["cells"]
    assert all(r["device"] == "cpu" for r in doc["request"] + doc["batch"])
    sizes = [(b["dtype"], b["batch_size"]) for b in doc["batch"]]
    assert sizes == [("fp32", 1), ("fp32", 2), ("bf16", 1), ("bf16", 2)]
    for b in doc["batch"]:
        batches = -(-b["images"] // b["batch_size"])
        assert b["images_per_s"] == pytest.approx(b["images"] / (batches * b["ms_per_batch"] / 1e3), rel=1e-6)
    assert {b["images"] for b in doc["batch"]} == {2}  # every batch size on the same images


def test_every_batch_size_runs_the_same_images(tmp_path, monkeypatch):
    """Batch 1 must not be timed on one image while batch 8 covers eight of other sizes."""
    import stamp.imaging
    from stamp.bench.request import RequestSettings, batch_records

    files = [(tmp_path / f"{k}.png", f"prompt {k}") for k in range(3)]
    calls = []

    class Recorder:
        model = argparse.Namespace(device=torch.device("cpu"))

        def predict_batch(self, items, **kwargs):
            calls.append([prompt for _, prompt in items])

    monkeypatch.setattr(stamp.imaging, "load_image", lambda path: path)
    settings = RequestSettings(batch_sizes=[1, 4, 3], warmup=0, batch_repeats=1)
    recs = batch_records(Recorder(), files, settings, "fp32")
    want = ["prompt 0", "prompt 1", "prompt 2", "prompt 0"]  # the first max(sizes) = 4, cycled
    assert [r["images"] for r in recs] == [4, 4, 4]
    assert [len(c) for c in calls] == [1, 1, 1, 1, 4, 3, 1]
    assert sum(calls[:4], []) == calls[4] == sum(calls[5:], []) == want


def test_targets_are_evaluated_from_the_records():
    rec = {"device": "cpu", "dtype": "fp32", "history": 512, "cache_flops_ratio": 1.5, "flops_fraction": 0.5}
    doc = {
        "mask_pass": [
            {**rec, "n": 256, "ar_ratio": 40.0, "cache_ratio": 2.5, "ar_ratio_bound": 80.0},
            {**rec, "n": 1024, "ar_ratio": 20.0, "cache_ratio": 1.4, "ar_ratio_bound": 25.0},
        ],
        "batch": [
            {"device": "cpu", "dtype": "fp32", "batch_size": 1, "speedup_vs_batch_1": 1.0},
            {"device": "cpu", "dtype": "fp32", "batch_size": 8, "speedup_vs_batch_1": 1.6},
        ],
    }
    got = {(t["target"], t.get("n")): t["met"] for t in evaluate_targets(doc)}
    assert got == {
        ("ar_ratio >= 30", 256): True,
        ("cache_ratio >= 2", 256): True,
        ("ar_ratio >= 30", 1024): False,
        ("cache_ratio >= 2", 1024): False,
        ("flops_fraction >= 0.75", 1024): False,
        ("batch 8 >= 1.5x batch 1", None): True,
    }
    assert all(t["device"] == "cpu" for t in evaluate_targets(doc))
    bounds = {(t["target"], t.get("n")): t.get("bound") for t in evaluate_targets(doc)}
    assert bounds[("ar_ratio >= 30", 1024)] == 25.0 and bounds[("cache_ratio >= 2", 1024)] == 1.5


def test_render_prints_every_section(quick_doc):
    doc, _ = quick_doc
    doc = {**doc, "targets": evaluate_targets({"batch": doc["batch"], "mask_pass": doc["mask_pass"]})}
    doc["targets"].append({"target": "x", "device": "cpu", "dtype": "fp32", "value": 1.0, "met": True})
    for markdown in (False, True):
        text = render(doc, markdown=markdown)
        for title in ("matmul reference", "mask pass", "request latency", "batch throughput", "targets"):
            assert title in text
        assert doc["command"] in text and doc["machine"]["date"] in text


def test_json_is_never_clobbered(quick_doc, tmp_path):
    _, out = quick_doc
    before = out.read_text()
    assert main(["--quick", "--json", str(out)]) == 2  # refused before any work, one line
    assert out.read_text() == before
    target = tmp_path / "x.json"
    write_json({"a": 1}, target)
    with pytest.raises(FileExistsError):
        write_json({"a": 2}, target)
    write_json({"a": 3}, target, force=True)
    assert json.loads(target.read_text()) == {"a": 3}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]  # no temporary files left behind


def test_add_parser_registers_bench():
    parser = argparse.ArgumentParser(prog="stamp")
    sub = parser.add_subparsers(dest="command")
    add_parser(sub)
    args = parser.parse_args(["bench", "--preset", "tiny", "--n", "64,256", "--dtypes", "bf16", "--quick"])
    assert args.command == "bench" and args.n == [64, 256] and args.dtypes == ["bf16"] and args.quick
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "--dtypes", "fp8"])


def test_interrupted_run_keeps_what_it_measured(tmp_path):
    """A run stopped mid-way (Ctrl-C, or SIGTERM from `timeout`) still returns and writes the finished
    measurements, marked incomplete, and exits non-zero."""
    import os
    import signal

    from stamp.bench.runner import BenchSettings, run_bench
    from stamp.bench.setup import load_bench_model

    model, processor, source = load_bench_model(None, "tiny", "cpu", None)
    settings = BenchSettings.quick_settings(dtypes=["fp32"], device="cpu")
    seen = []

    def log(line):
        if line.startswith("[mask pass] fp32 N="):
            seen.append(line)
            if len(seen) == 1:
                raise KeyboardInterrupt

    doc = run_bench(model, processor, source, settings, log=log)
    assert doc["interrupted"] == "KeyboardInterrupt"
    assert len(doc["mask_pass"]) == 1 and doc["mask_pass"][0]["device"] == "cpu"
    assert doc["request"] == [] and "INCOMPLETE" in render(doc)
    assert model.get_input_embeddings().weight.dtype == torch.float32  # cast back

    # through the CLI: SIGTERM during the mask pass -> JSON written, exit code 130
    import stamp.bench.mask_pass as mp

    real = mp.mask_pass_record

    calls = []

    def record_then_term(*a, **k):  # the second measurement is cut short; the first must be kept
        calls.append(1)
        if len(calls) == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*a, **k)

    out = tmp_path / "partial.json"
    mp.mask_pass_record = record_then_term
    try:
        code = main(["--quick", "--device", "cpu", "--dtypes", "fp32", "--json", str(out)])
    finally:
        mp.mask_pass_record = real
    saved = json.loads(out.read_text())
    assert code == 130 and saved["interrupted"] == "SIGTERM" and len(saved["mask_pass"]) == 1
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is only there during the run


def test_real_presets_take_their_defaults_and_options():
    from stamp.bench.runner import settings_from_args
    from stamp.cli.bench import configure

    parser = configure(argparse.ArgumentParser())
    s = settings_from_args(parser.parse_args(["--preset", "qwen2-vl-2b", "--device", "cpu"]))
    assert s.mask_pass.ns == [256, 1024] and s.mask_pass.dtypes == ["bf16"] and s.mask_pass.ar_steps is None
    assert s.request.image_sides == [448, 896] and s.request.batch_sizes == []
    args = ["--preset", "qwen2-vl-7b", "--device", "cpu", "--ar-steps", "32", "--image-sizes", "896"]
    s = settings_from_args(parser.parse_args(args))
    assert s.mask_pass.ar_steps == 32 and s.request.image_sides == [896]


def test_a_preset_too_large_for_the_machine_is_one_line(monkeypatch, capsys):
    import stamp.bench.presets as presets

    monkeypatch.setattr(presets, "available_bytes", lambda device: 2**30)
    assert main(["--preset", "qwen2-vl-7b", "--device", "cpu", "--n", "16"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "qwen2-vl-7b" in err and "GiB of weights" in err and "1.0 GiB are free" in err


def test_report_prints_a_saved_run(quick_doc, capsys):
    doc, out = quick_doc
    assert main(["--report", str(out), "--markdown"]) == 0
    printed = capsys.readouterr().out
    assert "mask pass" in printed and doc["command"] in printed
    assert main(["--report", str(out) + ".missing"]) == 2
