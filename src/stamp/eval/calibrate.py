"""Calibrate a model's mask threshold on held-out data (`stamp calibrate`).

A STAMP model trained on area-fraction targets predicts, per cell, roughly the share of the cell that is
foreground. Cutting those probabilities at 0.5 is not what maximises IoU: a cell that is a third
foreground still raises the IoU of a mask that overlaps its object by less than half. The best cut
depends on the model and the data, so it is measured: the model runs ONCE per sample (the expensive
part), and every candidate threshold then re-cuts the recorded cell probabilities and re-runs the
refinement, scored with the same code as `stamp eval`.

Calibrate on data that is not the split you report (for SynthRef: `--split val --seed 1`, whose scenes
differ from the reported `--seed 0`), then store the chosen threshold in the model directory
(`--write`): `stamp segment`, `eval`, `serve` and the Python API use it unless given `--threshold`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from stamp.inference.predictor import StampPredictor
from stamp.outputs import atomic_write_bytes, ensure_writable
from stamp.outputs.files import write_json

DEFAULT_THRESHOLDS = (0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5)
RULE_METRICS = ("ciou", "giou", "n_acc", "t_acc")
"""The threshold chosen maximises the mean of those of these metrics the data reports (VQA accuracy
does not depend on the threshold)."""


class ReplayPredictor(StampPredictor):
    """A StampPredictor that records every image encoding and generation of a first pass over some
    samples and, after `rewind()`, replays them: later passes redo only the thresholding and the
    refinement, so they must ask the same prompts about the same images in the same order (checked)."""

    def __init__(self, model, processor=None, *, refine="none") -> None:
        super().__init__(model, processor, refine=refine)
        self._log: list[tuple[object, list[tuple[str, object]]]] = []  # (encoded image, [(prompt, output)])
        self._pos: int | None = None  # None: recording
        self._turns: list[tuple[str, object]] = []
        self._prompt = ""

    def set_threshold(self, threshold: float) -> None:
        """Cut probabilities at `threshold` from now on (the guided refiner's cut too)."""
        self.threshold = float(threshold)
        if hasattr(self.refiner, "threshold"):
            self.refiner.threshold = self.threshold

    def rewind(self) -> None:
        """Start replaying the recorded pass from its first image."""
        self._pos = 0

    def set_image(self, image) -> None:
        if self._pos is None:
            super().set_image(image)
            # the pixels are not needed again; keep only what thresholding and refinement read
            self._log.append((replace(self._image, pixel_values=None), []))
            return
        if self._pos >= len(self._log):
            raise RuntimeError("replay: more images than the recorded pass had")
        self._image, self._turns = self._log[self._pos]
        self._pos += 1
        self._features = None

    def chat(self, prompt: str, *args, **kwargs):
        if self._pos is None:
            self._prompt = prompt
            return super().chat(prompt, *args, **kwargs)
        if not self._turns or self._turns[0][0] != prompt:
            raise RuntimeError(f"replay: prompt {prompt!r} was not the next one recorded")
        (_, out), self._turns = self._turns[0], self._turns[1:]
        return self._finish(out, self._image, 0.0, True, prompt)

    def _finish(self, out, enc, vision_seconds: float, *args, **kwargs):
        if self._pos is None:
            self._log[-1][1].append((self._prompt, out))
        return super()._finish(out, enc, vision_seconds, *args, **kwargs)


@dataclass
class CalibrationJob:
    data: str
    split: str = "val"
    model: str | None = None
    seed: int = 1
    limit: int | None = 600
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    refine: str = "auto"
    dtype: str | None = None
    device: str = "cpu"
    image_root: str | None = None
    synth_size: tuple[int, int] | None = None
    cells: tuple[int, int] | None = None
    """Override the model's dynamic resolution: (min, max) merged 28x28 cells per image."""
    max_new_tokens: int = 64
    out: str | None = None
    overwrite: bool = False
    write: bool = False


def rule_score(metrics: dict) -> float:
    """Mean of the RULE_METRICS present in `metrics` (percentages)."""
    vals = [float(metrics[k]) for k in RULE_METRICS if metrics.get(k) is not None]
    return sum(vals) / len(vals) if vals else float("nan")


def choose(results: list[dict]) -> float:
    """The threshold with the best `rule_score`; ties go to the one nearest 0.5 (the usual cut)."""
    best = max(results, key=lambda r: (round(r["score"], 6), -abs(r["threshold"] - 0.5)))
    return best["threshold"]


def model_config_path(model: str | None) -> Path:
    """config.json of the model directory or shipped model's name (`None`: the bundled model); ValueError
    if it holds no STAMP settings (e.g. a LoRA adapter directory)."""
    from stamp.bundled import model_name
    from stamp.model.loading import resolve_model_path

    path = resolve_model_path(model_name(model)) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path}: {exc}") from None
    if not isinstance(config.get("stamp"), dict):
        raise ValueError(f'{path} holds no STAMP settings ("stamp"); --write needs a full model directory')
    return path


def write_threshold(model: str | None, threshold: float) -> Path:
    """Store `threshold` as `stamp.mask_threshold` in the model's config.json (atomically)."""
    path = model_config_path(model)
    config = json.loads(path.read_text())
    config["stamp"]["mask_threshold"] = float(threshold)
    atomic_write_bytes(path, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    return path


def run_calibration(job: CalibrationJob, progress: bool = True) -> dict:
    """Sweep `job.thresholds`; returns (and writes to `job.out`) every threshold's metrics and the choice."""
    import torch

    from stamp.bundled import model_name
    from stamp.data.registry import open_dataset, parse_data_spec
    from stamp.eval.evaluate import evaluate_samples
    from stamp.inference.predictor import resolve_refine
    from stamp.processing import load_model_and_processor
    from stamp.refine import check_refine_source

    thresholds = sorted({float(t) for t in job.thresholds})
    if not thresholds or not all(0.0 < t < 1.0 for t in thresholds):
        raise ValueError(f"thresholds must lie in (0, 1), got {job.thresholds}")
    out = Path(job.out) if job.out else None
    if out is not None:
        ensure_writable([out], job.overwrite)
    check_refine_source(job.refine)
    if job.write:
        model_config_path(job.model)  # fail before the slow part
    kind, path = parse_data_spec(job.data)
    dataset = open_dataset(
        kind, path, job.split, image_root=job.image_root, seed=job.seed, image_size_range=job.synth_size
    )
    n = len(dataset) if job.limit is None else min(job.limit, len(dataset))
    torch.manual_seed(job.seed)
    model, processor = load_model_and_processor(model_name(job.model), dtype=job.dtype, device=job.device)
    if job.cells is not None:
        processor.set_cell_range(*job.cells)
    refine = resolve_refine(job.refine, model)
    predictor = ReplayPredictor(model, processor, refine=refine)
    before = predictor.threshold
    results = []
    for k, t in enumerate(thresholds):
        predictor.set_threshold(t)
        if k:
            predictor.rewind()
        report = evaluate_samples(
            predictor,
            (dataset[i] for i in range(n)),
            total=n,
            max_new_tokens=job.max_new_tokens,
            progress=progress and k == 0,
        )
        metrics = {
            key: report.metrics.get(key) for key in (*RULE_METRICS, "vqa_acc", "patch_ciou", "n_samples")
        }
        results.append({"threshold": t, "score": rule_score(metrics), "metrics": metrics})
    best = choose(results)
    summary = {
        "schema": 1,
        "data": job.data,
        "split": job.split,
        "seed": job.seed,
        "model": job.model or "bundled",
        "dtype": str(model.dtype).removeprefix("torch."),
        "refine": refine,
        "cells": list(job.cells) if job.cells else None,
        "rule": "max mean of " + ", ".join(RULE_METRICS) + " (those reported); ties: nearest 0.5",
        "threshold_before": before,
        "results": results,
        "best": best,
        "written": None,
    }
    if job.write:
        summary["written"] = str(write_threshold(job.model, best))
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, summary)
    return summary


def format_table(summary: dict) -> str:
    """The sweep as a plain-text table, the chosen threshold marked."""
    cols = [c for c in RULE_METRICS if any(r["metrics"].get(c) is not None for r in summary["results"])]
    lines = ["threshold  " + "  ".join(f"{c:>6}" for c in cols) + "    mean"]
    for r in summary["results"]:
        vals = "  ".join(
            f"{r['metrics'][c]:6.1f}" if r["metrics"].get(c) is not None else "     -" for c in cols
        )
        mark = "  <- best" if r["threshold"] == summary["best"] else ""
        lines.append(f"{r['threshold']:9.2f}  {vals}  {r['score']:6.2f}{mark}")
    return "\n".join(lines)
