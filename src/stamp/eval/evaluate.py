"""The evaluation loop: free generation on each sample's first exchange, scored with the field's metrics.

For each sample, the first user turn is the prompt and the masks of the first assistant turn are the
ground truth, one expression per `<|seg|>` (the k-th predicted mask is scored against the k-th ground
truth; a missing prediction counts as "declined", i.e. an empty mask). VQA samples (no mask, a short
gold answer in `meta["answer"]`) are scored for accuracy.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stamp.data.errors import DataError
from stamp.data.sample import SEG_TOKEN, StampSample
from stamp.eval.metrics import SegMetrics, VQAAccuracy, mask_iou_stats, normalize_answer
from stamp.imaging import ImageError
from stamp.model.losses import IGNORE_VALUE, patch_targets
from stamp.outputs.records import encode_rle


@dataclass
class EvalReport:
    """The accumulators of one evaluation (mergeable across shards) and one record per expression."""

    seg: SegMetrics = field(default_factory=SegMetrics)
    patch: SegMetrics = field(default_factory=SegMetrics)
    vqa: VQAAccuracy = field(default_factory=VQAAccuracy)
    samples: list[dict] = field(default_factory=list)
    subtasks: dict[str, SegMetrics | VQAAccuracy] = field(default_factory=dict)
    """Accumulators per subtask, for data that names one per sample (SynthRef: `meta["subtask"]`)."""

    def subtask(self, name: str, vqa: bool) -> SegMetrics | VQAAccuracy:
        """The accumulator of subtask `name` (a name used by both kinds gets a " (vqa)" twin)."""
        kind = VQAAccuracy if vqa else SegMetrics
        acc = self.subtasks.get(name)
        if acc is not None and not isinstance(acc, kind):
            return self.subtask(f"{name} (vqa)" if vqa else f"{name} (seg)", vqa)
        if acc is None:
            acc = self.subtasks[name] = kind()
        return acc

    @property
    def by_subtask(self) -> dict[str, dict[str, float]]:
        """Per subtask, sorted by name: the segmentation metrics that apply, or vqa_acc; and n_samples."""
        return {
            name: {k: v for k, v in self.subtasks[name].compute().items() if not math.isnan(v)}
            for name in sorted(self.subtasks)
        }

    @property
    def metrics(self) -> dict[str, float]:
        """Percentages (0-100) and counts: pixel-level seg metrics, patch_ciou/patch_giou, vqa_acc."""
        out: dict[str, float] = {}
        if self.seg.n_samples:
            out.update(self.seg.compute())
            p = self.patch.compute()
            out["patch_ciou"], out["patch_giou"] = p["ciou"], p["giou"]
        if self.vqa.n_samples:
            out["vqa_acc"] = self.vqa.compute()["vqa_acc"]
            out["n_vqa"] = self.vqa.n_samples
        out["n_samples"] = self.seg.n_samples + self.vqa.n_samples
        return out


def merge_reports(reports: list[EvalReport]) -> EvalReport:
    """Combine shard reports (samples concatenated in shard order)."""
    merged = EvalReport()
    for r in reports:
        merged.seg.merge(r.seg)
        merged.patch.merge(r.patch)
        merged.vqa.merge(r.vqa)
        merged.samples.extend(r.samples)
        for name, acc in r.subtasks.items():
            merged.subtask(name, isinstance(acc, VQAAccuracy)).merge(acc)
        merged.seg.generalized |= r.seg.generalized
    return merged


def vqa_correct(prediction: str, short: str, gold_text: str | None = None) -> bool:
    """Exact match with the short answer or the gold sentence, or the short answer as a whole phrase
    inside the prediction (long-form answers such as "It is red." for "red")."""
    pred = normalize_answer(prediction.replace(SEG_TOKEN, " "))
    refs = {normalize_answer(short)} | ({normalize_answer(gold_text)} if gold_text else set())
    if pred in refs:
        return True
    short_n = normalize_answer(short)
    alternatives = {short_n} | ({"no", "none"} if short_n == "0" else set())
    return any(re.search(rf"(^| ){re.escape(a)}( |$)", pred) for a in alternatives if a)


def first_exchange(sample: StampSample) -> tuple[str, str, list[np.ndarray]]:
    """(prompt, gold answer, gold masks of that answer) of the sample's first user/assistant exchange."""
    prompt = sample.turns[0].text
    answer = sample.turns[1].text if len(sample.turns) > 1 else ""
    return prompt, answer, list(sample.masks[: answer.count(SEG_TOKEN)])


def evaluate_samples(
    predictor,
    samples: Iterable[StampSample],
    *,
    answer_prefix: str | None = None,
    max_new_tokens: int = 64,
    progress: bool = True,
    save_masks: Path | None = None,
    total: int | None = None,
    masks_named: Path | None = None,
) -> EvalReport:
    """Run the predictor on each sample and accumulate pixel-level and patch-level metrics.

    Args:
        answer_prefix: force each answer to start with this (e.g. "Sure, it is <|seg|>"), as the
            literature's evaluations do; None lets the model decide whether to emit `<|seg|>`.
        save_masks: write each predicted mask as `<save_masks>/<k>.png` (k = record number).
        masks_named: the folder the records' `mask_file` name (default `save_masks`): where the masks
            will be once a run writing into a temporary folder has moved them into place.

    Each mask record carries its predicted mask as COCO RLE (`rle`, {size, counts}; null where the
    answer had no mask for the expression) and its `score`, so results can be rescored with other tools.
    """
    report = EvalReport()
    seg, patch, vqa, records = report.seg, report.patch, report.vqa, report.samples
    for sample in tqdm(samples, total=total, desc="eval", unit="sample", disable=not progress):
        prompt, gold, gt_masks = first_exchange(sample)
        t0 = time.perf_counter()
        try:
            predictor.set_image(sample.load_image())
        except (ImageError, DataError) as err:  # a damaged or missing file: which sample, which file
            raise DataError(f"sample {sample.id}: {err}") from None
        is_vqa = not gt_masks and "answer" in sample.meta
        result = predictor.chat(
            prompt, max_new_tokens=max_new_tokens, answer_prefix=None if is_vqa else answer_prefix
        )
        seconds = time.perf_counter() - t0
        image_ref = str(sample.image) if isinstance(sample.image, (str, Path)) else None
        base = {"id": sample.id, "image": image_ref, "prompt": prompt, "answer": result.text}
        base["finish_reason"] = getattr(result, "finish_reason", "eos")
        subtask = str(sample.meta.get("subtask") or "").split("+")[0]  # that of the first exchange
        if subtask:
            base["subtask"] = subtask
        # the run's accumulator, and its subtask's where the data names one
        accumulators = (vqa if is_vqa else seg,) + ((report.subtask(subtask, vqa=is_vqa),) if subtask else ())
        if is_vqa:
            ok = vqa_correct(result.text, str(sample.meta["answer"]), gold)
            for acc in accumulators:
                acc.n_samples += 1
                acc.n_correct += int(ok)
            records.append(
                {**base, "task": "vqa", "gold": sample.meta["answer"], "correct": ok, "seconds": seconds}
            )
            continue
        for k, gt in enumerate(gt_masks):
            declined = k >= len(result.masks)
            pred = np.zeros(gt.shape, bool) if declined else result.masks[k].mask
            has_target = bool(((gt != 0) & (gt != IGNORE_VALUE)).any())
            seg.generalized |= not has_target
            inter, union = mask_iou_stats(pred, gt)
            for acc in accumulators:
                acc.update(
                    inter,
                    union,
                    has_target=has_target,
                    predicted_nonempty=bool(pred.any()),
                    declined=declined,
                )
            # the same expression on the model's own cell grid (counts of cells, never of pixels)
            grid = predictor.grid_hw
            frac, valid = patch_targets(gt, grid)
            gt_cells = np.where(valid.numpy() > 0, (frac.numpy() >= 0.5).astype(np.uint8), IGNORE_VALUE)
            p_pred = np.zeros(grid, bool) if declined else result.masks[k].patch_mask
            p_i, p_u = mask_iou_stats(p_pred, gt_cells)
            patch.update(
                p_i,
                p_u,
                has_target=bool((gt_cells == 1).any()),
                predicted_nonempty=bool(p_pred.any()),
                declined=declined,
            )
            rec = {
                **base,
                "task": sample.task,
                "mask_index": k,
                "intersection": inter,
                "union": union,
                "iou": 1.0 if union == 0 else inter / union,
                "has_mask": not declined,
                "mask_nonempty": bool(pred.any()),
                "has_target": has_target,
                "seconds": seconds,
                "score": None if declined else round(float(result.masks[k].score), 6),
                "rle": None if declined else encode_rle(pred),
            }
            if save_masks is not None and not declined:
                from stamp.outputs.files import save_mask_png

                name = f"{len(records):06d}.png"
                save_mask_png(pred, Path(save_masks) / name)
                rec["mask_file"] = str(Path(masks_named or save_masks) / name)
            records.append(rec)
    return report
