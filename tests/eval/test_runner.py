"""`stamp eval` end to end on SynthRef and on SynthRef exported in the real benchmarks' formats."""

import json

import pytest
from helpers import run_two_cpu_ranks, save_tiny_model

from stamp.cli import main
from stamp.data.synthref.export import export_synthref


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):

    path = tmp_path_factory.mktemp("m") / "tiny"
    save_tiny_model(path)
    return path


SAMPLE_KEYS = {"id", "image", "prompt", "answer", "intersection", "union", "iou", "has_mask", "seconds"}


def test_eval_synthref_schema_and_no_overwrite(model_dir, tmp_path, capsys):
    out = tmp_path / "r.json"
    argv = [
        "eval",
        "--data",
        "synthref",
        "--split",
        "val",
        "--limit",
        "6",
        "--model",
        str(model_dir),
        "--out",
        str(out),
        "--no-progress",
        "--force-seg",
        "--max-new-tokens",
        "8",
    ]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert res["schema"] == 1 and res["split"] == "val" and res["force_seg"] is True
    assert res["dtype"] == "float32"  # the tiny test model is saved and computed in fp32
    m = res["metrics"]
    assert {"ciou", "giou", "precision@0.5", "precision@0.9", "n_samples", "patch_ciou"} <= set(m)
    assert all(0.0 <= m[k] <= 100.0 for k in ("ciou", "giou", "precision@0.5"))
    seg_records = [r for r in res["samples"] if "iou" in r]
    assert seg_records and all(SAMPLE_KEYS <= set(r) for r in seg_records)
    # forced: every answer starts with a mask, so each sample's first expression has one
    assert all(r["has_mask"] for r in seg_records if r["mask_index"] == 0)
    total_i = sum(r["intersection"] for r in seg_records)
    total_u = sum(r["union"] for r in seg_records)
    assert abs(m["ciou"] - 100.0 * total_i / max(total_u, 1)) < 1e-6
    # SynthRef names each sample's subtask: every record carries it and by_subtask splits the metrics
    by_sub = res["by_subtask"]
    assert all(r["subtask"] in by_sub for r in res["samples"])
    assert sum(v["n_samples"] for v in by_sub.values()) == m["n_samples"]
    for name, sub in by_sub.items():
        recs = [r for r in res["samples"] if r["subtask"] == name]
        assert sub["n_samples"] == len(recs)
        if "vqa_acc" in sub:
            assert sub["vqa_acc"] == pytest.approx(100.0 * sum(r["correct"] for r in recs) / len(recs))
        else:
            u = sum(r["union"] for r in recs)
            assert sub["ciou"] == pytest.approx(
                100.0 if u == 0 else 100.0 * sum(r["intersection"] for r in recs) / u
            )
    assert main(argv) == 2 and "already exists" in capsys.readouterr().err


def test_eval_exported_refer_and_grefer_formats(model_dir, tmp_path):
    root = tmp_path / "lisa"
    export_synthref(root / "r", "val", 4, "refer", progress=False)  # RefCOCO in the LISA layout
    out = tmp_path / "refcoco.json"
    assert (
        main(
            [
                "eval",
                "--data",
                f"refcoco:{root / 'r'}",
                "--split",
                "val",
                "--model",
                str(model_dir),
                "--out",
                str(out),
                "--no-progress",
                "--max-new-tokens",
                "6",
            ]
        )
        == 0
    )
    res = json.loads(out.read_text())
    assert res["metrics"]["n_samples"] >= 4
    export_synthref(root / "g", "val", 6, "grefer", progress=False)
    out_g = tmp_path / "g.json"
    assert (
        main(
            [
                "eval",
                "--data",
                f"grefcoco:{root / 'g'}",
                "--split",
                "val",
                "--model",
                str(model_dir),
                "--out",
                str(out_g),
                "--no-progress",
                "--max-new-tokens",
                "6",
                "--save-masks",
                str(tmp_path / "masks"),
            ]
        )
        == 0
    )
    metrics = json.loads(out_g.read_text())["metrics"]
    assert "n_acc" in metrics and "t_acc" in metrics


def test_bad_data_spec_is_one_line_error(tmp_path, capsys):
    assert main(["eval", "--data", "refcocoo:/x", "--out", str(tmp_path / "x.json")]) == 2
    assert "did you mean refcoco" in capsys.readouterr().err
    assert main(["eval", "--data", f"refcoco:{tmp_path / 'missing'}", "--out", str(tmp_path / "x.json")]) == 2


def test_eval_with_guided_refinement_records_it(model_dir, tmp_path):
    out = tmp_path / "g.json"
    argv = [
        "eval",
        "--data",
        "synthref",
        "--split",
        "val",
        "--limit",
        "2",
        "--model",
        str(model_dir),
        "--out",
        str(out),
        "--no-progress",
        "--force-seg",
        "--refine",
        "guided",
    ]
    assert main(argv) == 0
    assert json.loads(out.read_text())["refine"] == "guided"
    assert main(argv[:-1] + ["sam:/nonexistent"] + ["--force"]) == 2  # a bad SAM path is a one-line error


def test_eval_sharded_over_two_ranks_equals_one_process(model_dir, tmp_path):

    common = [
        "--data",
        "synthref",
        "--split",
        "val",
        "--limit",
        "4",
        "--model",
        str(model_dir),
        "--no-progress",
        "--force-seg",
        "--max-new-tokens",
        "4",
    ]
    single = tmp_path / "one.json"
    assert main(["eval", *common, "--out", str(single)]) == 0
    sharded = tmp_path / "two.json"
    out = run_two_cpu_ranks(["eval", *common, "--out", str(sharded)], port=29533, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    a, b = json.loads(single.read_text()), json.loads(sharded.read_text())
    assert a["metrics"].keys() == b["metrics"].keys()
    assert all(abs(a["metrics"][k] - b["metrics"][k]) < 1e-9 for k in a["metrics"])  # summation order differs
    assert sorted(r["id"] for r in a["samples"]) == sorted(r["id"] for r in b["samples"])


def test_patch_metrics_count_cells_for_declined_samples():
    """A declined expression adds its target CELLS (not pixels) to the patch-level union."""
    import numpy as np

    from stamp.data.sample import StampSample, Turn
    from stamp.eval.evaluate import evaluate_samples
    from stamp.inference.predictor import StampResult

    class Declines:
        grid_hw = (2, 2)

        def set_image(self, image):
            pass

        def chat(self, prompt, **kw):
            return StampResult("No.")

    gt = np.zeros((56, 56), np.uint8)
    gt[:28, :28] = 1  # exactly one cell
    sample = StampSample(
        "s", np.zeros((56, 56, 3), np.uint8), [Turn("user", "x"), Turn("assistant", "It is <|seg|>.")], [gt]
    )
    sample.load_image = lambda: None
    report = evaluate_samples(Declines(), [sample], progress=False)
    assert report.patch.sum_union == 1 and report.seg.sum_union == 28 * 28


def test_subtask_accumulators_merge_across_shards_and_keep_kinds_apart():
    from stamp.eval.evaluate import EvalReport, merge_reports

    a, b = EvalReport(), EvalReport()
    a.subtask("vqa_shape", vqa=True).update("circle", "circle")
    b.subtask("vqa_shape", vqa=True).update("square", "circle")
    b.subtask("attribute", vqa=False).update(30, 60, has_target=True, predicted_nonempty=True)
    b.subtask("no_target", vqa=False).update(0, 0, has_target=False, predicted_nonempty=False)
    b.subtask("attribute", vqa=True).update("yes", "yes")  # the same name used for both kinds
    merged = merge_reports([a, b]).by_subtask
    assert merged["vqa_shape"] == {"vqa_acc": 50.0, "n_samples": 2}
    assert merged["attribute"]["ciou"] == 50.0 and merged["attribute"]["n_samples"] == 1
    assert merged["attribute (vqa)"] == {"vqa_acc": 100.0, "n_samples": 1}
    assert merged["no_target"]["n_acc"] == 100.0 and "t_acc" not in merged["no_target"]  # NaN left out


def test_save_masks_folder_is_never_mixed_with_an_old_run(model_dir, tmp_path, monkeypatch, capsys):
    """A non-empty --save-masks folder is refused before any work; --force replaces its masks."""
    masks = tmp_path / "masks"
    masks.mkdir()
    stale = masks / "999999.png"
    stale.write_bytes(b"an old run's mask")
    argv = ["eval", "--data", "synthref", "--limit", "3", "--model", str(model_dir), "--no-progress"]
    argv += ["--force-seg", "--max-new-tokens", "2", "--synth-tasks", "refer=1", "--save-masks", str(masks)]
    import stamp.processing

    real = stamp.processing.load_model_and_processor
    monkeypatch.setattr(
        stamp.processing, "load_model_and_processor", lambda *a, **k: pytest.fail("loaded before the check")
    )
    assert main(argv + ["--out", str(tmp_path / "a.json")]) == 2
    assert "--force" in capsys.readouterr().err and stale.exists()
    (masks / "notes.txt").write_text("mine")  # not a mask: --force does not delete it, and says so
    assert main(argv + ["--out", str(tmp_path / "a.json"), "--force"]) == 2
    assert "more than mask PNGs" in capsys.readouterr().err and stale.exists()
    (masks / "notes.txt").unlink()
    monkeypatch.setattr(stamp.processing, "load_model_and_processor", real)
    assert main(argv + ["--out", str(tmp_path / "a.json"), "--force"]) == 0
    res = json.loads((tmp_path / "a.json").read_text())
    written = sorted(p.name for p in masks.iterdir())
    assert not stale.exists() and written  # only this run's masks
    assert sorted(r["mask_file"].rsplit("/", 1)[-1] for r in res["samples"] if "mask_file" in r) == written


def test_limit_counts_samples_and_results_report_expressions(model_dir, tmp_path):
    """--limit N takes N samples; a sample may hold several expressions: both counts are reported."""
    out = tmp_path / "r.json"
    argv = ["eval", "--data", "synthref", "--limit", "3", "--model", str(model_dir), "--no-progress"]
    argv += ["--force-seg", "--max-new-tokens", "2", "--synth-tasks", "multi=1", "--out", str(out)]
    assert main(argv) == 0
    res = json.loads(out.read_text())
    assert res["limit"] == 3 and res["n_samples"] == 3 and len({r["id"] for r in res["samples"]}) == 3
    assert res["n_expressions"] == res["metrics"]["n_samples"] == len(res["samples"]) > 3


def test_results_are_strict_json_and_records_carry_each_mask_as_rle(model_dir, tmp_path):
    """A metric that does not apply is null, not NaN; each record's `rle` is the mask it scored."""
    import numpy as np
    from PIL import Image
    from pycocotools import mask as mask_utils

    def refuse(word):
        raise ValueError(f"not JSON: {word}")

    out, masks = tmp_path / "r.json", tmp_path / "masks"
    argv = ["eval", "--data", "synthref", "--limit", "3", "--model", str(model_dir), "--no-progress"]
    argv += ["--force-seg", "--max-new-tokens", "2", "--synth-tasks", "no_target=1"]
    assert main(argv + ["--out", str(out), "--save-masks", str(masks)]) == 0
    res = json.loads(out.read_text(), parse_constant=refuse)  # as JavaScript's JSON.parse reads it
    assert "t_acc" in res["metrics"] and res["metrics"]["t_acc"] is None  # no expression has a target
    records = [r for r in res["samples"] if r.get("has_mask")]
    assert records
    for r in records:
        decoded = mask_utils.decode({**r["rle"], "counts": r["rle"]["counts"].encode()}).astype(bool)
        saved = np.asarray(Image.open(r["mask_file"])) > 127
        assert np.array_equal(decoded, saved) and r["score"] is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks", "r.json"]  # no temporary folder left
