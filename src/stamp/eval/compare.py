"""`stamp compare A.json B.json`: two `stamp eval` results on the same samples, with paired bootstrap
intervals for every difference.

Two models evaluated on the same few hundred expressions differ by a point or two, and whether that is
more than the draw of samples is what a model choice turns on: 79 VQA questions carry a binomial
standard error of about 5.5 points. The comparison recomputes each metric from the per-sample records
(`samples` of results.json; it refuses files whose records do not reproduce their own `metrics`),
then draws the samples with replacement `resamples` times -- the SAME draw for both models, so what
the two share cancels -- and reports B - A with its central `level` interval and the share of draws
in which B is ahead. A sample (an `id`) is drawn whole: every mask and answer of a multi-target or
multi-turn sample goes together.

Metrics: `ciou`, `giou`, `n_acc`, `t_acc` (when the data has no-target expressions; T-acc needs the
`mask_nonempty` field of the results records; older files lack it), `vqa_acc`, and `mean` (of those
present: for SynthRef, the mean of the five target metrics).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

METRICS = ("ciou", "giou", "n_acc", "t_acc", "vqa_acc")
TOLERANCE = 1e-6  # percentage points: records must reproduce the file's metrics to this


def load_results(path: str | Path) -> dict:
    """A results.json of `stamp eval` (schema 1, with its per-sample records); ValueError otherwise."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a JSON file ({exc})") from None
    if not isinstance(doc, dict) or doc.get("schema") != 1 or not isinstance(doc.get("samples"), list):
        raise ValueError(f"{path}: not a results.json of `stamp eval` (schema 1 with per-sample records)")
    if not doc["samples"]:
        raise ValueError(f"{path}: holds no samples")
    return doc


def _key(rec: dict) -> tuple:
    return (rec["id"], rec.get("task"), rec.get("mask_index", -1))


class _Table:
    """Per-sample-id sums of everything the metrics need, for one results file, ids in `order`."""

    def __init__(self, doc: dict, order: list[str], name: str):
        index = {sid: i for i, sid in enumerate(order)}
        n = len(order)
        cols = ("inter", "union", "iou", "seg", "nt", "nt_ok", "t", "t_ok", "v", "v_ok")
        self.sums = {c: np.zeros(n) for c in cols}
        self.has_t_acc = True
        s = self.sums
        for rec in doc["samples"]:
            i = index[rec["id"]]
            if rec.get("task") == "vqa":
                s["v"][i] += 1
                s["v_ok"][i] += bool(rec["correct"])
                continue
            inter, union = int(rec["intersection"]), int(rec["union"])
            s["inter"][i] += inter
            s["union"][i] += union
            s["iou"][i] += 1.0 if union == 0 else inter / union
            s["seg"][i] += 1
            if rec["has_target"]:
                s["t"][i] += 1
                if "mask_nonempty" in rec:
                    s["t_ok"][i] += bool(rec["has_mask"] and rec["mask_nonempty"])
                else:
                    self.has_t_acc = False
            else:
                s["nt"][i] += 1
                if "mask_nonempty" in rec:
                    s["nt_ok"][i] += not (rec["has_mask"] and rec["mask_nonempty"])
                else:  # older files: with no target, the prediction is empty when its union is 0
                    s["nt_ok"][i] += union == 0
        self.name = name

    def metrics(self, weights: np.ndarray) -> dict[str, np.ndarray]:
        """Each metric (percent) under sample weights (R, n) -- one row per bootstrap draw."""
        s = self.sums

        def ratio(num, den, empty=np.nan):
            d = weights @ s[den]
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(d > 0, 100.0 * (weights @ s[num]) / np.where(d > 0, d, 1), empty)

        out = {}
        if s["seg"].sum():
            out["ciou"] = ratio("inter", "union", empty=100.0)  # every union 0: all empty-vs-empty
            out["giou"] = ratio("iou", "seg")
        if s["nt"].sum():
            out["n_acc"] = ratio("nt_ok", "nt")
            if self.has_t_acc:
                out["t_acc"] = ratio("t_ok", "t")
        if s["v"].sum():
            out["vqa_acc"] = ratio("v_ok", "v")
        return out


def _check_reproduces(table: _Table, doc: dict) -> None:
    point = table.metrics(np.ones((1, len(table.sums["seg"]))))
    stored = doc.get("metrics", {})
    for name, values in point.items():
        if name in stored and stored[name] is not None and not math.isnan(float(stored[name])):
            if abs(float(values[0]) - float(stored[name])) > TOLERANCE:
                raise ValueError(
                    f"{table.name}: its samples give {name} {float(values[0]):.4f}, its metrics say "
                    f"{float(stored[name]):.4f} (an edited or merged file?)"
                )


def compare(
    a: dict, b: dict, *, resamples: int = 2000, seed: int = 0, level: float = 0.95, names=("A", "B")
) -> dict:
    """Paired bootstrap comparison of two results documents (see the module docstring).

    Returns {"n_ids", "n_records", "resamples", "seed", "level", "metrics": {name: {"a", "b", "diff",
    "low", "high", "p_b_ahead"}}}; metrics present in both files only, plus "mean" of them.
    """
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    keys_a = {_key(r): r for r in a["samples"]}
    keys_b = {_key(r): r for r in b["samples"]}
    if len(keys_a) != len(a["samples"]) or len(keys_b) != len(b["samples"]):
        raise ValueError("a results file lists the same (id, task, mask_index) twice")
    if keys_a.keys() != keys_b.keys():
        only_a, only_b = len(keys_a.keys() - keys_b.keys()), len(keys_b.keys() - keys_a.keys())
        raise ValueError(
            f"{names[0]} and {names[1]} were not evaluated on the same samples ({only_a} records only in "
            f"{names[0]}, {only_b} only in {names[1]}): use the same --data, --split, --seed and --limit"
        )
    for k, ra in keys_a.items():
        if ra.get("task") != "vqa" and bool(ra["has_target"]) != bool(keys_b[k]["has_target"]):
            raise ValueError(f"{names[0]} and {names[1]} disagree on the ground truth of {k[0]}")
    order = list(dict.fromkeys(r["id"] for r in a["samples"]))
    ta, tb = _Table(a, order, names[0]), _Table(b, order, names[1])
    _check_reproduces(ta, a)
    _check_reproduces(tb, b)
    n = len(order)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    weights = np.zeros((resamples, n))
    np.add.at(weights, (np.repeat(np.arange(resamples), n), draws.ravel()), 1.0)
    ones = np.ones((1, n))
    pa, pb = ta.metrics(ones), tb.metrics(ones)
    ba, bb = ta.metrics(weights), tb.metrics(weights)
    names_present = [m for m in METRICS if m in pa and m in pb]
    if names_present:
        for d in (pa, pb, ba, bb):
            d["mean"] = np.mean([d[m] for m in names_present], axis=0)
        names_present.append("mean")
    tail = (1 - level) / 2
    out = {}
    for m in names_present:
        diff = bb[m] - ba[m]
        diff = diff[~np.isnan(diff)]
        out[m] = {
            "a": float(pa[m][0]),
            "b": float(pb[m][0]),
            "diff": float(pb[m][0] - pa[m][0]),
            "low": float(np.quantile(diff, tail)) if diff.size else math.nan,
            "high": float(np.quantile(diff, 1 - tail)) if diff.size else math.nan,
            "p_b_ahead": float((diff > 0).mean()) if diff.size else math.nan,
        }
    return {
        "n_ids": n,
        "n_records": len(keys_a),
        "resamples": resamples,
        "seed": seed,
        "level": level,
        "metrics": out,
    }


def format_comparison(result: dict, names=("A", "B")) -> str:
    pct = round(100 * result["level"])
    lines = [
        f"{result['n_ids']} samples ({result['n_records']} records), paired bootstrap: {result['resamples']} "
        f"draws, seed {result['seed']}",
        f"{'metric':<8} {names[0][:12]:>12} {names[1][:12]:>12} {'B - A':>8} {f'{pct}% interval':>18} {'P(B ahead)':>11}",
    ]
    for m, r in result["metrics"].items():
        interval = f"[{r['low']:+.2f}, {r['high']:+.2f}]"
        lines.append(
            f"{m:<8} {r['a']:>12.2f} {r['b']:>12.2f} {r['diff']:>+8.2f} {interval:>18} {r['p_b_ahead']:>11.3f}"
        )
    return "\n".join(lines)
