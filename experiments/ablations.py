"""The paper's comparisons at small scale on SynthRef (issue 7): ablations, dialogue preservation,
refinement and resolution transfer. Every run uses the same backbone size, data and step budget.

    python experiments/ablations.py                          # all runs, then the table
    python experiments/ablations.py --only full,no_hybrid    # some runs
    python experiments/ablations.py --only full,no_hybrid --seeds 1,2   # more seeds of some runs
    python experiments/ablations.py --report                 # only print the markdown table
    python experiments/ablations.py --steps 50 --eval-limit 8 --out /tmp/abl   # a smoke test

Each run trains `configs/experiments/ablation-base.yaml` plus its overrides into <out>/<name>/
(`--resume` semantics: an interrupted run continues from its last checkpoint) and then evaluates the
final model; a run whose results JSON exists is skipped. Results: <out>/<name>.json.
The `next_token` run is the Text4Seg-style baseline: the same backbone and data, trained to spell each
mask as N label tokens after `<|seg|>` and decoded autoregressively; it is trained and evaluated through
`experiments/next_token.py` (`SCRIPT_RUNS`: its trainer arguments and its predictor).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import next_token  # noqa: E402 - the `next_token` run's training and decoding

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "experiments" / "ablation-base.yaml"
SEG_TASKS = "{refer: 0.5, grefer: 0.1, no_target: 0.1}"  # the base mix without its VQA share

# name -> (training overrides, what it ablates)
RUNS: dict[str, tuple[list[str], str]] = {
    "full": ([], "STAMP: hybrid attention, visual mask embedding, grid positions, mixed data"),
    "no_hybrid": (["model.attention_mode=causal"], "causal attention among placeholders (w/o A_hyb)"),
    "plain_mask": (
        ["model.mask_embedding=plain"],
        "plain mask-token embeddings, no visual feature (w/o E_mask)",
    ),
    "text_positions": (["model.position_mode=text"], "1-D placeholder positions (the authors' checkpoints)"),
    "seg_only": ([f"data.task_weights={SEG_TASKS}"], "segmentation data only (no VQA, no dialogue)"),
    "vqa_only": (["data.task_weights={vqa: 1.0}"], "VQA data only (dialogue baseline)"),
    "next_token": ([], "Text4Seg-style baseline: the mask as N label tokens, decoded one by one"),
}
# Runs trained and evaluated through an experiment's script: name -> (config -> the trainer's extra
# keyword arguments, the predictor class of its evaluations).
SCRIPT_RUNS = {"next_token": (next_token.training_extras, next_token.LabelPredictor)}
# Evaluations of every run (label, eval overrides), at the training image size and on the training task
# mix (`base_task_mix()`), with refinement off so that the rows compare the models themselves.
TRAIN_SIZE = (224, 256)
EVALS: list[tuple[str, dict]] = [
    ("val", {"split": "val", "synth_size": TRAIN_SIZE, "refine": "none"}),
    ("compositional", {"split": "compositional", "synth_size": TRAIN_SIZE, "refine": "none"}),
]
# Extra evaluations of the full model: refinement and resolution transfer (it trained at 224-256 px,
# 64-100 cells; the paper trains at 896 px and deploys at 504/726).
FULL_EXTRA: list[tuple[str, dict]] = [
    ("val_guided", {"split": "val", "synth_size": TRAIN_SIZE, "refine": "guided"}),
    ("val_160px", {"split": "val", "synth_size": (160, 192), "cells": (25, 49), "refine": "none"}),
    ("val_320px", {"split": "val", "synth_size": (320, 352), "cells": (121, 169), "refine": "none"}),
    ("val_448px", {"split": "val", "synth_size": (448, 448), "cells": (256, 256), "refine": "none"}),
]


def base_task_mix() -> dict[str, float] | None:
    """The task mix of the base config (evaluations use it, so no run is tested on unseen task types)."""
    from stamp.train.config import TrainConfig
    from stamp.yaml_config import load_config

    return load_config(TrainConfig, BASE).data.task_weights


def run_name(name: str, seed: int) -> str:
    return name if seed == 0 else f"{name}_s{seed}"


def run_one(name: str, out: Path, steps: int | None, eval_limit: int, seed: int = 0) -> dict:
    """Train (or resume) run `name` with `seed`, then evaluate it; returns its results dict."""
    import time

    from stamp.eval.runner import EvalJob, run_eval
    from stamp.eval.validation import validation_for
    from stamp.train.checkpoint import latest_checkpoint
    from stamp.train.config import TrainConfig
    from stamp.train.trainer import train
    from stamp.yaml_config import load_config

    label_name = run_name(name, seed)
    result_file = out / f"{label_name}.json"
    if result_file.exists():
        print(f"{label_name}: results exist, skipped ({result_file})")
        return json.loads(result_file.read_text())
    overrides, _ = RUNS[name]
    run_dir = out / label_name
    overrides = overrides + [f"run.out_dir={run_dir}", f"run.seed={seed}"]
    overrides += [f"run.steps={steps}"] if steps else []
    cfg = load_config(TrainConfig, BASE, overrides)
    last = latest_checkpoint(run_dir)
    t0 = time.time()
    extras, predictor_type = SCRIPT_RUNS.get(name, (lambda _: {}, None))
    if last is None or int(last.name.split("_")[1]) < cfg.run.steps:
        train(cfg, resume=last is not None, **extras(cfg), **validation_for(cfg))
        last = latest_checkpoint(run_dir)
    train_minutes = (time.time() - t0) / 60
    evals = EVALS + (FULL_EXTRA if name == "full" and seed == 0 else [])
    results = {
        "name": name,
        "seed": seed,
        "overrides": overrides,
        "steps": cfg.run.steps,
        "train_minutes_this_session": round(train_minutes, 1),
        "evals": {},
    }
    mix = base_task_mix()
    for label, kw in evals:
        job = EvalJob(
            data="synthref",
            model=str(last / "model"),
            out=str(run_dir / f"eval_{label}.json"),
            limit=eval_limit,
            overwrite=True,
            synth_tasks=mix,
            **kw,
        )
        metrics = run_eval(job, progress=False, predictor_type=predictor_type)["metrics"]
        metrics.update(_seconds(run_dir / f"eval_{label}.json"))
        results["evals"][label] = metrics
        print(
            f"{label_name} {label}: "
            + ", ".join(f"{k} {v:.1f}" for k, v in metrics.items() if isinstance(v, float))
        )
    tmp = result_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(result_file)
    return results


def _seconds(eval_file: Path) -> dict[str, float]:
    """Mean wall seconds per sample (answer and masks) over all samples and over referring samples."""
    samples = json.loads(eval_file.read_text())["samples"]
    refer = [r["seconds"] for r in samples if r.get("task") == "refer"]
    return {
        "seconds_per_sample": sum(r["seconds"] for r in samples) / max(len(samples), 1),
        "seconds_per_refer_sample": sum(refer) / max(len(refer), 1),
    }


def bootstrap_ciou(eval_file: Path, rounds: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% interval of cIoU under resampling the evaluated masks (evaluation noise only, not training
    noise): percentile bootstrap over the per-mask (intersection, union) records of a results file."""
    import numpy as np

    recs = [r for r in json.loads(eval_file.read_text())["samples"] if "union" in r]
    if not recs:
        return (0.0, 0.0)
    inter = np.array([r["intersection"] for r in recs], dtype=np.float64)
    union = np.array([r["union"] for r in recs], dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, len(recs), size=(rounds, len(recs)))
    ciou = 100.0 * inter[idx].sum(1) / np.maximum(union[idx].sum(1), 1.0)
    lo, hi = np.percentile(ciou, [2.5, 97.5])
    return float(lo), float(hi)


def paired_difference(
    eval_a: Path, eval_b: Path, rounds: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """cIoU(b) - cIoU(a) and its 95% paired-bootstrap interval over the masks both files scored (the
    same SynthRef samples, resampled together): evaluation noise of a difference, not training noise."""
    import numpy as np

    def records(f: Path) -> dict:
        return {
            (r["id"], r.get("mask_index")): r for r in json.loads(f.read_text())["samples"] if "union" in r
        }

    ra, rb = records(eval_a), records(eval_b)
    keys = sorted(set(ra) & set(rb))
    if not keys:
        return (0.0, 0.0, 0.0)
    arr = np.array(
        [[ra[k]["intersection"], ra[k]["union"], rb[k]["intersection"], rb[k]["union"]] for k in keys],
        dtype=np.float64,
    )

    def diff(rows: np.ndarray) -> np.ndarray:
        ia, ua, ib, ub = (rows[..., j].sum(-1) for j in range(4))
        return 100.0 * (ib / np.maximum(ub, 1.0) - ia / np.maximum(ua, 1.0))

    idx = np.random.default_rng(seed).integers(0, len(keys), size=(rounds, len(keys)))
    lo, hi = np.percentile(diff(arr[idx]), [2.5, 97.5])
    return float(diff(arr)), float(lo), float(hi)


def paired_vqa_difference(
    eval_a: Path, eval_b: Path, rounds: int = 1000, seed: int = 0
) -> tuple[float, float, float]:
    """VQA accuracy(b) - accuracy(a) in points and its 95% paired-bootstrap interval over the VQA
    questions both files answered (evaluation noise only)."""
    import numpy as np

    def answers(f: Path) -> dict:
        return {r["id"]: bool(r["correct"]) for r in json.loads(f.read_text())["samples"] if "correct" in r}

    ra, rb = answers(eval_a), answers(eval_b)
    keys = sorted(set(ra) & set(rb))
    if not keys:
        return (0.0, 0.0, 0.0)
    delta = np.array([float(rb[k]) - float(ra[k]) for k in keys])
    idx = np.random.default_rng(seed).integers(0, len(keys), size=(rounds, len(keys)))
    lo, hi = np.percentile(100.0 * delta[idx].mean(1), [2.5, 97.5])
    return float(100.0 * delta.mean()), float(lo), float(hi)


def _seed_results(out: Path, name: str) -> list[dict]:
    """Finished results of run `name` for every seed (name.json, name_s1.json, ...)."""
    files = [out / f"{name}.json"] + sorted(out.glob(f"{name}_s[0-9]*.json"))
    return [json.loads(f.read_text()) for f in files if f.exists()]


def _cell(values: list[float]) -> str:
    """Mean over seeds, with +- half the spread when there are several."""
    if not values:
        return "-"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} +- {(max(values) - min(values)) / 2:.1f}"


def _metric(runs: list[dict], out: Path, split: str, key: str) -> list[float]:
    """One metric of every seed of a run; wall times are read from the evaluation files."""
    values = []
    for r in runs:
        metrics = r["evals"].get(split, {})
        if key.startswith("seconds"):
            f = out / run_name(r["name"], r.get("seed", 0)) / f"eval_{split}.json"
            metrics = _seconds(f) if f.exists() else metrics
        if key in metrics:
            values.append(metrics[key])
    return values


def report(out: Path) -> str:
    """The markdown tables of docs/RESULTS.md from every finished run (means over seeds, percent)."""
    results = {name: _seed_results(out, name) for name in RUNS}
    for name in ("full", "no_hybrid", "plain_mask", "text_positions", "next_token", "seg_only", "vqa_only"):
        results.setdefault(name, [])  # runs left out of RUNS (tests) have no rows

    def cell(name: str, split: str, key: str, digits: int = 1) -> str:
        values = _metric(results[name], out, split, key)
        return _cell(values) if digits == 1 else (f"{sum(values) / len(values):.3f}" if values else "-")

    def seeds(name: str) -> int:
        return len(results[name])

    lines = [
        "Ablations (SynthRef val and compositional at the training size, no refinement):",
        "",
        "| run | ablates | seeds | val cIoU | seed 0: 95% interval | seed 0: change vs full (95% paired) "
        "| val gIoU | val patch cIoU | compositional cIoU | compositional patch cIoU | s / referring sample |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def interval(name: str) -> str:
        f = out / name / "eval_val.json"
        if not f.exists():
            return "-"
        lo, hi = bootstrap_ciou(f)
        return f"{lo:.1f} to {hi:.1f}"

    def change(name: str, difference=paired_difference) -> str:
        """`difference` (cIoU or VQA) of run `name` against the full model, seed 0, with its interval."""
        a, b = out / "full" / "eval_val.json", out / name / "eval_val.json"
        if name == "full" or not (a.exists() and b.exists()):
            return "-"
        d, lo, hi = difference(a, b)
        return f"{d:+.1f} ({lo:+.1f} to {hi:+.1f})"

    for name in ("full", "no_hybrid", "plain_mask", "text_positions"):
        if results[name]:
            lines.append(
                f"| {name} | {RUNS[name][1]} | {seeds(name)} | {cell(name, 'val', 'ciou')} | {interval(name)} | {change(name)} "
                f"| {cell(name, 'val', 'giou')} | {cell(name, 'val', 'patch_ciou')} "
                f"| {cell(name, 'compositional', 'ciou')} | {cell(name, 'compositional', 'patch_ciou')} "
                f"| {cell(name, 'val', 'seconds_per_refer_sample', 3)} |"
            )
    lines += [
        "",
        "Next-token baseline against STAMP (same backbone, data and steps; greedy decoding, batch 1):",
        "",
        "| run | seeds | val cIoU | val patch cIoU | compositional cIoU | s / referring sample | s / sample |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in ("full", "next_token"):
        if results[name]:
            lines.append(
                f"| {name} | {seeds(name)} | {cell(name, 'val', 'ciou')} | {cell(name, 'val', 'patch_ciou')} "
                f"| {cell(name, 'compositional', 'ciou')} | {cell(name, 'val', 'seconds_per_refer_sample', 3)} "
                f"| {cell(name, 'val', 'seconds_per_sample', 3)} |"
            )
    lines += [
        "",
        "Dialogue preservation (VQA exact match and segmentation on SynthRef val):",
        "",
        "| run | training data | seeds | VQA acc | seed 0: VQA change vs full (95% paired) | val cIoU "
        "| seed 0: cIoU change vs full (95% paired) | val patch cIoU | compositional VQA acc |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    for name in ("full", "seg_only", "vqa_only"):
        if results[name]:
            lines.append(
                f"| {name} | {RUNS[name][1]} | {seeds(name)} | {cell(name, 'val', 'vqa_acc')} | {change(name, paired_vqa_difference)} "
                f"| {cell(name, 'val', 'ciou')} | {change(name)} | {cell(name, 'val', 'patch_ciou')} "
                f"| {cell(name, 'compositional', 'vqa_acc')} |"
            )
    if results["full"]:
        lines += [
            "",
            "Refinement and resolution transfer (the full model, seed 0, trained at 224-256 px):",
            "",
            "| evaluation | cIoU | gIoU | patch cIoU | s / referring sample |",
            "|---|---|---|---|---|",
        ]
        first = results["full"][0]
        for label, m in first["evals"].items():
            secs = _metric([first], out, label, "seconds_per_refer_sample")
            lines.append(
                f"| {label} | {m.get('ciou', 0):.1f} | {m.get('giou', 0):.1f} | {m.get('patch_ciou', 0):.1f} "
                f"| {secs[0] if secs else 0:.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results"))
    ap.add_argument("--only", default=None, help="comma-separated run names (default: all)")
    ap.add_argument("--steps", type=int, default=None, help="override the step budget (smoke tests)")
    ap.add_argument("--eval-limit", type=int, default=300, help="SynthRef samples per evaluation")
    ap.add_argument("--seeds", default="0", help="comma-separated seeds (seed 0 is the run's plain name)")
    ap.add_argument("--report", action="store_true", help="only print the table of finished runs")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    names = args.only.split(",") if args.only else list(RUNS)
    unknown = [n for n in names if n not in RUNS]
    if unknown:
        print(f"unknown run(s) {unknown}; choose from {list(RUNS)}", file=sys.stderr)
        return 2
    if not args.report:
        seeds = [int(v) for v in args.seeds.split(",")]
        for seed in seeds:
            for name in names:
                run_one(name, out, args.steps, args.eval_limit, seed)
    print(report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
