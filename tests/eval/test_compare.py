"""`stamp compare`: metrics recomputed from per-sample records, paired bootstrap intervals, clear refusals."""

import json

import numpy as np
import pytest
from helpers import save_tiny_model

from stamp.cli import main
from stamp.eval.compare import compare, load_results
from stamp.eval.metrics import SegMetrics


def _doc(records):
    """A results document whose metrics are computed by the evaluator's own accumulators."""
    seg, vqa_n, vqa_ok = SegMetrics(), 0, 0
    for r in records:
        if r["task"] == "vqa":
            vqa_n, vqa_ok = vqa_n + 1, vqa_ok + r["correct"]
        else:
            seg.update(
                r["intersection"],
                r["union"],
                has_target=r["has_target"],
                predicted_nonempty=r["mask_nonempty"],
                declined=not r["has_mask"],
            )
    metrics = seg.compute()
    if vqa_n:
        metrics["vqa_acc"] = 100.0 * vqa_ok / vqa_n
    return {"schema": 1, "metrics": metrics, "samples": records}


def _seg(sid, inter, union, target=True, nonempty=None, k=0):
    nonempty = union > 0 if nonempty is None else nonempty
    return {
        "id": sid, "task": "refer", "mask_index": k, "intersection": inter, "union": union,
        "has_mask": nonempty or target, "mask_nonempty": nonempty, "has_target": target,
    }  # fmt: skip


def _vqa(sid, ok):
    return {"id": sid, "task": "vqa", "correct": ok}


def test_point_metrics_by_hand_and_identical_models_differ_by_nothing():
    recs = [
        _seg("a", 30, 60),  # IoU 0.5
        _seg("a", 10, 40, k=1),  # the same sample's second mask: IoU 0.25
        _seg("b", 0, 0, target=False, nonempty=False),  # no target, answered empty: N-acc hit, IoU 1
        _seg("c", 0, 50, nonempty=False),  # target missed: T-acc miss
        _vqa("d", True),
        _vqa("e", False),
    ]
    doc = _doc(recs)
    res = compare(doc, doc, resamples=200)
    m = res["metrics"]
    assert m["ciou"]["a"] == pytest.approx(100 * 40 / 150)
    assert m["giou"]["a"] == pytest.approx(100 * (0.5 + 0.25 + 1 + 0) / 4)
    assert m["n_acc"]["a"] == 100.0 and m["t_acc"]["a"] == pytest.approx(200 / 3)
    assert m["vqa_acc"]["a"] == 50.0
    five = [m[k]["a"] for k in ("ciou", "giou", "n_acc", "t_acc", "vqa_acc")]
    assert m["mean"]["a"] == pytest.approx(sum(five) / 5)
    assert res["n_ids"] == 5 and res["n_records"] == 6
    for r in m.values():
        assert r["diff"] == r["low"] == r["high"] == 0.0 and r["p_b_ahead"] == 0.0


def test_a_model_better_on_every_sample_is_ahead_in_every_draw():
    rng = np.random.default_rng(0)
    a_recs, b_recs = [], []
    for i in range(40):
        u = int(rng.integers(50, 100))
        a_recs.append(_seg(f"s{i}", u // 3, u))
        b_recs.append(_seg(f"s{i}", u // 2, u))
    a, b = _doc(a_recs), _doc(b_recs)
    res = compare(a, b, resamples=300, seed=1)["metrics"]
    assert res["ciou"]["diff"] > 0 and res["ciou"]["low"] > 0 and res["ciou"]["p_b_ahead"] == 1.0
    back = compare(b, a, resamples=300, seed=1)["metrics"]
    assert back["ciou"]["high"] < 0 and back["ciou"]["p_b_ahead"] == 0.0
    assert back["ciou"]["low"] == pytest.approx(-res["ciou"]["high"])  # the same draws, mirrored
    # a noisy difference: the interval spans 0
    c_recs = [
        _seg(f"s{i}", r["intersection"] + (3 if i % 2 else -3), r["union"]) for i, r in enumerate(a_recs)
    ]
    mixed = compare(a, _doc(c_recs), resamples=500)["metrics"]["ciou"]
    assert mixed["low"] < 0 < mixed["high"] and 0 < mixed["p_b_ahead"] < 1


def test_refusals():
    a = _doc([_seg("a", 30, 60), _seg("b", 10, 20)])
    b = _doc([_seg("a", 30, 60), _seg("c", 10, 20)])
    with pytest.raises(ValueError, match="not evaluated on the same samples"):
        compare(a, b)
    tampered = json.loads(json.dumps(a))
    tampered["metrics"]["ciou"] += 1.0
    with pytest.raises(ValueError, match="its samples give ciou"):
        compare(a, tampered)
    with pytest.raises(ValueError, match="resamples"):
        compare(a, a, resamples=0)


def test_older_files_without_mask_nonempty_have_no_t_acc():
    recs = [_seg("a", 30, 60), _seg("b", 0, 0, target=False, nonempty=False)]
    doc = _doc(recs)
    old = json.loads(json.dumps(doc))
    for r in old["samples"]:
        del r["mask_nonempty"]
    m = compare(old, old, resamples=10)["metrics"]
    assert "t_acc" not in m and m["n_acc"]["a"] == 100.0 and m["ciou"]["a"] == pytest.approx(50.0)


def test_cli_on_two_real_eval_runs(tmp_path, capsys):

    model = tmp_path / "tiny"
    save_tiny_model(model)
    common = ["eval", "--data", "synthref", "--split", "val", "--limit", "10", "--model", str(model)]
    common += ["--no-progress", "--max-new-tokens", "6", "--synth-tasks", "refer=0.4,no_target=0.3,vqa=0.3"]
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    assert main([*common, "--force-seg", "--out", str(a)]) == 0
    assert main([*common, "--force-seg", "--threshold", "0.9", "--out", str(b)]) == 0
    doc = load_results(a)
    assert all("mask_nonempty" in r for r in doc["samples"] if r["task"] != "vqa")
    capsys.readouterr()
    out = tmp_path / "cmp.json"
    assert main(["compare", str(a), str(b), "--resamples", "100", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "P(B ahead)" in text and "ciou" in text and f"wrote {out}" in text
    res = json.loads(out.read_text())
    assert res["schema"] == "stamp-compare/1" and res["resamples"] == 100
    for name in ("ciou", "giou", "n_acc", "t_acc"):  # the records reproduced each file's stored metrics
        assert res["metrics"][name]["a"] == pytest.approx(doc["metrics"][name])
    assert main(["compare", str(a), str(b), "--json", str(out)]) == 2  # never overwritten without --force
    assert "already exists" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{not json")
    assert main(["compare", str(a), str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not a JSON file" in err
