"""Why a model misses referring targets on SynthRef: empty masks, masks on the wrong object, or hits.

    python experiments/failure_modes.py                       # the bundled model
    python experiments/failure_modes.py --model runs/x/checkpoints/step_0000600/model --n 200

For single-target referring samples of SynthRef val at a given image size (free generation, no
refinement), each prediction is counted as: no `<|seg|>` in the answer; an empty mask; a mask that
overlaps the target; a mask that misses it. For empty masks it also reports how often the model's
highest-scoring cell lies on the target (cell foreground fraction >= 0.2): high means the model knows
where the object is but is under-confident, low means it has not found the object. `by_subtask` splits
the counts (and cIoU) by SynthRef's referring subtask (attribute, spatial, superlative, ordinal ...).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def cell_fraction(gt: np.ndarray, grid: tuple[int, int], cell: tuple[int, int]) -> float:
    """Foreground fraction of one grid cell of the full-resolution mask `gt`."""
    (gh, gw), (r, c) = grid, cell
    h, w = gt.shape
    block = gt[r * h // gh : (r + 1) * h // gh, c * w // gw : (c + 1) * w // gw]
    return float(block.mean()) if block.size else 0.0


def _classify(res, gt: np.ndarray) -> dict[str, int]:
    """The counts one prediction adds (a single key of no_seg/empty/hit/miss, plus pixel sums)."""
    if not res.masks:
        return {"no_seg": 1, "union": int(gt.sum())}
    m = res.masks[0]
    out = {"inter": int((m.mask & gt).sum()), "union": int((m.mask | gt).sum())}
    if not m.mask.any():
        cell = np.unravel_index(int(m.patch_logits.argmax()), m.patch_logits.shape)
        out.update(empty=1, empty_argmax_on_target=int(cell_fraction(gt, m.patch_logits.shape, cell) >= 0.2))
    else:
        out["hit" if (m.mask & gt).any() else "miss"] = 1
    return out


def _summary(counts: dict[str, int]) -> dict:
    out = {k: int(v) for k, v in counts.items() if k not in ("inter", "union")}
    out["ciou"] = round(100.0 * counts["inter"] / max(counts["union"], 1), 1)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model directory (default: the bundled model)")
    ap.add_argument("--n", type=int, default=120, help="referring samples")
    ap.add_argument("--size", default="224,256", help="SynthRef image size range MIN,MAX in px")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: the model's own choice)")
    args = ap.parse_args(argv)
    import torch

    from stamp.bundled import model_name
    from stamp.data.synthref import SynthRef
    from stamp.inference import StampPredictor
    from stamp.processing import load_model_and_processor

    torch.set_num_threads(args.threads)
    lo, hi = (int(v) for v in args.size.split(","))
    ds = SynthRef("val", seed=0, task_weights={"refer": 1.0}, image_size_range=(lo, hi))
    pred = StampPredictor(*load_model_and_processor(model_name(args.model), dtype=args.dtype), refine="none")
    keys = ("no_seg", "empty", "hit", "miss", "empty_argmax_on_target", "inter", "union")
    counts = dict.fromkeys(keys, 0)
    by_subtask: dict[str, dict[str, int]] = {}
    for i in range(args.n):
        sample = ds[i]
        pred.set_image(sample.load_image())
        res = pred.chat(sample.turns[0].text, max_new_tokens=32)
        gt = np.asarray(sample.masks[0]) > 0
        sub = by_subtask.setdefault(str(sample.meta.get("subtask")), dict.fromkeys(keys, 0))
        for key, value in _classify(res, gt).items():
            counts[key] += value
            sub[key] += value
    report = {"n": args.n, "size": [lo, hi], **_summary(counts)}
    report["by_subtask"] = {
        k: {"n": sum(v[c] for c in keys[:4]), **_summary(v)} for k, v in sorted(by_subtask.items())
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
