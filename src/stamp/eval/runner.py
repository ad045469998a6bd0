"""`stamp eval`: evaluate a model on a data split and write `results.json`.

    stamp eval --data refcoco:/data/lisa --split val --model /models/stamp-2b --out results.json
    stamp eval --data synthref --split val --limit 200 --out synth.json        # the bundled model
    stamp eval --data refcoco:/data/lisa --split val --model DIR --protocol authors   # the paper's protocol
    accelerate launch --num_processes 2 -m stamp eval ...                  # sharded across ranks

results.json (schema version 1):
    {"schema": 1, "data": "refcoco:/data/lisa", "split": "val", "model": "...", "protocol": "stamp",
     "max_new_tokens": 64, "repetition_stop": true, "upsample": "prob", "force_seg": false,
     "limit": N or null, "n_samples": data samples evaluated, "n_expressions": expressions scored,
     "metrics": {"ciou", "giou", "precision@0.5" ... "precision@0.9", "n_acc", "t_acc", "vqa_acc",
                 "patch_ciou", "patch_giou", "n_samples"}   -- percentages 0-100, those that apply;
                 n_samples here counts what the metrics average over: expressions (and VQA answers)
     "samples": [{"id", "image", "prompt", "answer", "finish_reason", "intersection", "union", "iou",
                  "has_mask", "seconds", "score", "rle", "mask_file"?, "subtask"?}, ...],
                 rle: the predicted mask as COCO RLE {size: [h, w], counts: str} (null: no mask),
                 for rescoring with other tools (pycocotools `mask.decode`)
     "by_subtask"?: {"SUBTASK": {the metrics above that apply, "n_samples"}}}  -- data naming subtasks

A metric that does not apply (T-acc of data without no-target expressions) is null: the file is strict
JSON (`stamp.outputs.jsondoc`). The --save-masks folder is written whole: into a temporary folder beside
it, moved into place (an earlier run's masks replaced) only once every mask of the run is written.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from stamp.eval.evaluate import EvalReport, evaluate_samples, merge_reports
from stamp.eval.protocols import get_protocol
from stamp.outputs.files import ensure_writable, new_dir_mode, replace_dir, write_json
from stamp.refine import check_refine_source

DEFAULT_FORCE_PREFIX = "Sure, it is <|seg|>"


@dataclass
class EvalJob:
    data: str
    split: str = "val"
    model: str | None = None
    out: str = "results.json"
    image_root: str | None = None
    limit: int | None = None
    seed: int = 0
    force_seg: bool = False
    save_masks: str | None = None
    max_new_tokens: int | None = None
    """Answer token budget (None: the protocol's)."""
    overwrite: bool = False
    dtype: str | None = None
    device: str = "cpu"
    refine: str = "auto"
    """none | guided | sam:PATH | auto (the model's own default, `StampSettings.refine`)."""
    threshold: float | None = None
    """Foreground probability threshold (None: the model's calibrated `mask_threshold`)."""
    synth_size: tuple[int, int] | None = None
    """SynthRef image width/height range in pixels (None: the split's default, 224-448)."""
    cells: tuple[int, int] | None = None
    """Override the model's dynamic resolution: (min, max) merged 28x28 cells per image."""
    synth_tasks: dict[str, float] | None = None
    """SynthRef task mix, e.g. {"refer": 1.0} (None: the split's default mix)."""
    protocol: str = "stamp"
    """How to ask and score (`stamp.eval.protocols`): "stamp" or "authors" (the paper's evaluation).
    Its answer budget, cells and threshold apply where the job leaves them None."""
    base_model: str | None = None
    """Base model folder of a LoRA adapter checkpoint."""
    repetition_stop: bool = True
    """Stop an answer caught in a degenerate loop (`StampPredictor(repetition_stop=...)`)."""


def run_eval(job: EvalJob, progress: bool = True, teardown: bool = True, predictor_type=None) -> dict:
    """Evaluate and write `job.out`; returns the results dict. Shards over accelerate ranks if launched so.

    `teardown=False` leaves the process group of a multi-process run up, for a caller that ends the
    process with os._exit (as `stamp eval` does: a gloo group's destructor can deadlock on the GIL).
    `predictor_type`: the class that answers, called as `StampPredictor` is (a subclass with its own
    `chat`, e.g. a script's other way of producing masks); None: `StampPredictor`."""
    from stamp.data.registry import open_dataset, parse_data_spec

    out = Path(job.out)
    if out.is_dir():
        raise FileExistsError(f"--out {out} is a folder; name the results file")
    ensure_writable([out], job.overwrite)
    check_refine_source(job.refine)
    masks_dir = Path(job.save_masks) if job.save_masks else None
    if masks_dir is not None:
        check_masks_dir(masks_dir, job.overwrite)
    protocol = get_protocol(job.protocol)
    kind, path = parse_data_spec(job.data)
    dataset = open_dataset(
        kind,
        path,
        job.split,
        image_root=job.image_root,
        seed=job.seed,
        image_size_range=job.synth_size,
        task_weights=job.synth_tasks,
    )
    n = len(dataset) if job.limit is None else min(job.limit, len(dataset))
    rank, world = _distributed()
    stage = masks_stage(masks_dir) if masks_dir is not None else None
    if stage is not None:
        if rank == 0:
            shutil.rmtree(stage, ignore_errors=True)  # a crashed run's
            stage.mkdir(parents=True, mode=new_dir_mode())
        if world > 1:
            torch.distributed.barrier()
    try:
        return _run(
            job, protocol, dataset, n, rank, world, masks_dir, stage, progress, teardown, predictor_type
        )
    except BaseException:
        if stage is not None and rank == 0:
            shutil.rmtree(stage, ignore_errors=True)
        raise


def _run(job, protocol, dataset, n, rank, world, masks_dir, stage, progress, teardown, predictor_type):
    from stamp.bundled import model_name
    from stamp.inference import StampPredictor
    from stamp.processing import load_model_and_processor

    out = Path(job.out)
    torch.manual_seed(job.seed)
    model, processor = load_model_and_processor(
        model_name(job.model), dtype=job.dtype, device=job.device, base_model=job.base_model
    )
    cells = job.cells or protocol.cells
    if cells is not None:
        processor.set_cell_range(*cells)
    from stamp.inference.predictor import resolve_refine

    if protocol.name == "authors" and job.refine == "auto":
        job.refine = "none"  # their raw masks; their SAM step is --refine sam-authors:PATH
    job.refine = resolve_refine(job.refine, model)
    threshold = job.threshold if job.threshold is not None else protocol.threshold
    predictor = (predictor_type or StampPredictor)(
        model,
        processor,
        threshold=threshold,
        refine=job.refine,
        upsample=protocol.upsample,
        repetition_stop=job.repetition_stop,
    )
    indices = range(rank, n, world)
    max_new_tokens = job.max_new_tokens or protocol.max_new_tokens
    report = evaluate_samples(
        predictor,
        (protocol.question(dataset[i], i, job.seed) for i in indices),
        total=len(indices),
        answer_prefix=DEFAULT_FORCE_PREFIX if job.force_seg else None,
        max_new_tokens=max_new_tokens,
        progress=progress and rank == 0,
        save_masks=stage,
        masks_named=masks_dir,
    )
    report = _gather(report, world)
    results = {
        "schema": 1,
        "data": job.data,
        "split": job.split,
        "model": job.model or "bundled",
        "dtype": str(model.dtype).removeprefix("torch."),  # what the model computed in
        "protocol": protocol.name,
        "max_new_tokens": max_new_tokens,
        "repetition_stop": job.repetition_stop,
        "upsample": protocol.upsample,
        "force_seg": job.force_seg,
        "refine": job.refine,
        "threshold": predictor.threshold,
        "synth_size": list(job.synth_size) if job.synth_size else None,
        "cells": list(cells) if cells else None,
        "limit": job.limit,
        "n_samples": n,
        "n_expressions": report.metrics["n_samples"],
        "metrics": report.metrics,
        "samples": report.samples,
    }
    if report.subtasks:
        results["by_subtask"] = report.by_subtask
    if world > 1 and stage is not None:
        torch.distributed.barrier()  # every rank's masks are written
    if rank == 0:
        if stage is not None:
            check_masks_dir(masks_dir, job.overwrite)  # nothing else appeared there meanwhile
            replace_dir(stage, masks_dir)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_json(out, results, indent=1)
    if world > 1:
        torch.distributed.barrier()
        if teardown:  # tear gloo down before exit: its threads abort the process if left to destructors
            torch.distributed.destroy_process_group()
    return results


def check_masks_dir(path: Path, overwrite: bool) -> None:
    """Refuse a --save-masks folder that holds anything unless `overwrite`; with it, refuse a folder that
    holds anything but mask PNGs (never delete what STAMP did not write). Called before any work."""
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"--save-masks {path} is a file, not a folder")
    if not path.is_dir():
        return
    entries = list(path.iterdir())
    if entries and not overwrite:
        raise FileExistsError(
            f"--save-masks folder {path} is not empty; use --force to replace its masks (or another folder)"
        )
    others = [p.name for p in entries if not (p.is_file() and p.suffix == ".png")]
    if others:
        raise FileExistsError(
            f"--save-masks folder {path} holds more than mask PNGs ({others[0]}); choose another folder"
        )


def masks_stage(path: Path) -> Path:
    """The temporary folder beside --save-masks `path` that a run writes its masks into (one name for
    every rank of a sharded run); renamed to `path` once complete."""
    path = Path(path)
    return path.parent / f".{path.name}.partial"


def _distributed() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from accelerate import PartialState

        state = PartialState(cpu=not torch.cuda.is_available())
        return state.process_index, state.num_processes
    return 0, 1


def _gather(report: EvalReport, world: int) -> EvalReport:
    if world == 1:
        return report
    parts: list = [None] * world
    torch.distributed.all_gather_object(parts, report)
    return merge_reports(parts)
