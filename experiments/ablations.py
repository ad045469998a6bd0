"""The paper's comparisons at small scale on SynthRef (issue 7): ablations, dialogue preservation,
refinement and resolution transfer. Every run uses the same backbone size, data and step budget.

    python experiments/ablations.py                          # all runs, then the table
    python experiments/ablations.py --only full,no_hybrid    # some runs
    python experiments/ablations.py --report                 # only print the markdown table
    python experiments/ablations.py --steps 50 --eval-limit 8 --out /tmp/abl   # a smoke test

Each run trains `configs/experiments/ablation-base.yaml` plus its overrides into <out>/<name>/
(`--resume` semantics: an interrupted run continues from its last checkpoint) and then evaluates the
final model; a run whose results JSON exists is skipped. Results: <out>/<name>.json.
Not yet here: the Text4Seg-style next-token baseline (the same backbone trained to emit N label
tokens), which needs its own training target.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "configs" / "experiments" / "ablation-base.yaml"
SEG_TASKS = "{refer: 0.30, grefer: 0.12, no_target: 0.12, reason: 0.12, multi: 0.10}"

# name -> (training overrides, what it ablates)
RUNS: dict[str, tuple[list[str], str]] = {
    "full": ([], "STAMP: hybrid attention, visual mask embedding, grid positions, mixed data"),
    "no_hybrid": (["model.attention_mode=causal"], "causal attention among placeholders (w/o A_hyb)"),
    "plain_mask": (["model.mask_embedding=plain"], "plain <|mask|> embeddings (w/o E_mask)"),
    "text_positions": (["model.position_mode=text"], "1-D placeholder positions (the authors' checkpoints)"),
    "seg_only": ([f"data.task_weights={SEG_TASKS}"], "segmentation data only (no VQA, no dialogue)"),
    "vqa_only": (["data.task_weights={vqa: 1.0}"], "VQA data only (dialogue baseline)"),
}
# evaluations of every run: (label, eval overrides)
EVALS: list[tuple[str, dict]] = [
    ("val", {"split": "val"}),
    ("compositional", {"split": "compositional"}),
]
# extra evaluations of the full model: refinement and resolution transfer (trained at 224-256 px)
FULL_EXTRA: list[tuple[str, dict]] = [
    ("val_guided", {"split": "val", "refine": "guided"}),
    ("val_160px", {"split": "val", "synth_size": (160, 192), "cells": (25, 49)}),
    ("val_320px", {"split": "val", "synth_size": (320, 352), "cells": (121, 169)}),
    ("val_448px", {"split": "val", "synth_size": (448, 448), "cells": (256, 256)}),
]


def run_one(name: str, out: Path, steps: int | None, eval_limit: int) -> dict:
    """Train (or resume) run `name`, then evaluate it; returns its results dict."""
    from stamp.configuration import load_config
    from stamp.eval.runner import EvalJob, run_eval
    from stamp.train.checkpoint import latest_checkpoint
    from stamp.train.config import TrainConfig
    from stamp.train.trainer import train

    result_file = out / f"{name}.json"
    if result_file.exists():
        print(f"{name}: results exist, skipped ({result_file})")
        return json.loads(result_file.read_text())
    overrides, _ = RUNS[name]
    run_dir = out / name
    overrides = overrides + [f"run.out_dir={run_dir}"] + ([f"run.steps={steps}"] if steps else [])
    cfg = load_config(TrainConfig, BASE, overrides)
    last = latest_checkpoint(run_dir)
    if last is None or int(last.name.split("_")[1]) < cfg.run.steps:
        train(cfg, resume=last is not None)
        last = latest_checkpoint(run_dir)
    evals = EVALS + (FULL_EXTRA if name == "full" else [])
    results = {"name": name, "overrides": overrides, "steps": cfg.run.steps, "evals": {}}
    for label, kw in evals:
        job = EvalJob(
            data="synthref",
            model=str(last / "model"),
            out=str(run_dir / f"eval_{label}.json"),
            limit=eval_limit,
            overwrite=True,
            **kw,
        )
        metrics = run_eval(job, progress=False)["metrics"]
        seconds = json.loads((run_dir / f"eval_{label}.json").read_text())["samples"]
        metrics["seconds_per_sample"] = sum(r["seconds"] for r in seconds) / max(len(seconds), 1)
        results["evals"][label] = metrics
        print(
            f"{name} {label}: "
            + ", ".join(f"{k} {v:.1f}" for k, v in metrics.items() if isinstance(v, float))
        )
    tmp = result_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(result_file)
    return results


def report(out: Path) -> str:
    """A markdown table of every finished run (pixel cIoU / gIoU / patch cIoU / N-acc / VQA acc)."""
    lines = [
        "| run | ablates | val cIoU | val gIoU | val patch cIoU | N-acc | VQA acc | compositional cIoU | s/sample |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, (_, what) in RUNS.items():
        f = out / f"{name}.json"
        if not f.exists():
            continue
        ev = json.loads(f.read_text())["evals"]
        v, c = ev.get("val", {}), ev.get("compositional", {})

        def g(d, k):
            return f"{d[k]:.1f}" if k in d else "-"

        lines.append(
            f"| {name} | {what} | {g(v, 'ciou')} | {g(v, 'giou')} | {g(v, 'patch_ciou')} | {g(v, 'n_acc')} "
            f"| {g(v, 'vqa_acc')} | {g(c, 'ciou')} | {v.get('seconds_per_sample', 0):.3f} |"
        )
    full = out / "full.json"
    if full.exists():
        ev = json.loads(full.read_text())["evals"]
        lines += ["", "| full model, eval | cIoU | gIoU | patch cIoU | s/sample |", "|---|---|---|---|---|"]
        for label, m in ev.items():
            lines.append(
                f"| {label} | {m.get('ciou', 0):.1f} | {m.get('giou', 0):.1f} | {m.get('patch_ciou', 0):.1f} "
                f"| {m.get('seconds_per_sample', 0):.3f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "experiments" / "results"))
    ap.add_argument("--only", default=None, help="comma-separated run names (default: all)")
    ap.add_argument("--steps", type=int, default=None, help="override the step budget (smoke tests)")
    ap.add_argument("--eval-limit", type=int, default=300, help="SynthRef samples per evaluation")
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
        for name in names:
            run_one(name, out, args.steps, args.eval_limit)
    print(report(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
