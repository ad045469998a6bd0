"""What a model's image tokens know about each object: linear probes of shape, colour and position.

    python experiments/probe_objects.py                        # the bundled model, 400 scenes
    python experiments/probe_objects.py --model DIR --scenes 500 --out probe.json

For SynthRef scenes (val split, `--seed`, default 3: neither the reported nor the selection set), each
visible object gets a feature vector: the mean, over the cells it covers (foreground fraction >= 0.5,
else its most-covered cell), of (a) the vision tower's output, i.e. what the language model receives
for those cells, and (b) the language model's last hidden state at those image tokens (the image comes
before any question and the prefix is causal, so (b) does not depend on the question); and, as
`vision_3x3` / `language_3x3`, the same features of 3 x 3 cells sampled evenly over the object's box,
concatenated (the shape may lie in the arrangement of cells rather than in their mean). A softmax
regression per target -- the object's shape (`kind`), colour and 3x3 grid position, the answers of
SynthRef's VQA -- is fit on the objects of the first 70% of scenes and scored on the rest, next to the
majority-class rate of the held-out objects. High probe accuracy with low VQA accuracy means the
information is in the image tokens but the answer does not read it out; low probe accuracy means the
image tokens never carried it.
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import torch


def image_token_states(predictor, prompt: str = "Describe the image.") -> torch.Tensor:
    """The language model's last hidden states at the predictor's current image tokens, (cells, hidden)
    in raster order, from the prompt pass of `prompt` (they do not depend on the prompt's text, which
    comes after the image). What the probes read."""
    from stamp.inference.generation import prefill

    if predictor.image_features is None:
        raise ValueError("no image: call set_image() first")
    predictor.check_prompt(prompt)
    request = predictor._request(predictor._image, predictor.image_features, prompt, None, None)
    pre = prefill(predictor.model, [request], predictor.pad_id)
    return pre.hidden[0][pre.image_tokens[0]]


def object_cells(instance_map: np.ndarray, index: int, grid: tuple[int, int]) -> list[int]:
    """Raster indices of the grid cells covered by object `index` (fraction >= 0.5, else the best one)."""
    gh, gw = grid
    h, w = instance_map.shape
    mine = instance_map == index + 1
    fractions = np.zeros(grid)
    for r in range(gh):
        for c in range(gw):
            block = mine[r * h // gh : (r + 1) * h // gh, c * w // gw : (c + 1) * w // gw]
            fractions[r, c] = block.mean() if block.size else 0.0
    cells = np.flatnonzero(fractions.ravel() >= 0.5)
    return cells.tolist() if cells.size else [int(fractions.argmax())]


def crop_cells(bbox: list[float], size: tuple[int, int], grid: tuple[int, int], k: int = 3) -> list[int]:
    """Raster indices of k x k cells sampled evenly over the object's box (row-major, repeats allowed)."""
    (w, h), (gh, gw) = size, grid
    x0, y0, x1, y1 = bbox
    xs = [x0 + (x1 - x0) * (j + 0.5) / k for j in range(k)]
    ys = [y0 + (y1 - y0) * (i + 0.5) / k for i in range(k)]
    return [min(int(y * gh / h), gh - 1) * gw + min(int(x * gw / w), gw - 1) for y in ys for x in xs]


def fit_probe(x: np.ndarray, y: np.ndarray, split: int, steps: int = 400, seed: int = 0) -> float:
    """Held-out accuracy (percent) of a softmax regression trained on rows [:split], tested on [split:]."""
    import torch

    torch.manual_seed(seed)
    mean, std = x[:split].mean(0), x[:split].std(0) + 1e-6
    xt = torch.tensor((x - mean) / std, dtype=torch.float32)
    classes = sorted(set(y.tolist()))
    yt = torch.tensor([classes.index(v) for v in y.tolist()])
    layer = torch.nn.Linear(xt.shape[1], len(classes))
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-2, weight_decay=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(layer(xt[:split]), yt[:split]).backward()
        opt.step()
    with torch.no_grad():
        return 100.0 * float((layer(xt[split:]).argmax(1) == yt[split:]).float().mean())


def majority_rate(y: np.ndarray, split: int) -> float:
    """Held-out accuracy (percent) of always answering the training rows' most frequent class."""
    values, counts = np.unique(y[:split], return_counts=True)
    return 100.0 * float((y[split:] == values[counts.argmax()]).mean())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model directory (default: the bundled model)")
    ap.add_argument("--scenes", type=int, default=400, help="val scenes (default 400)")
    ap.add_argument("--seed", type=int, default=3, help="SynthRef val seed (default 3)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--out", default=None, help="also write the report as JSON here")
    args = ap.parse_args(argv)
    if args.scenes < 10:
        print("probe_objects: need --scenes >= 10", file=sys.stderr)
        return 2
    import torch
    from tqdm import tqdm

    from stamp.bundled import model_name
    from stamp.data.synthref import SynthRef
    from stamp.inference import StampPredictor
    from stamp.processing import load_model_and_processor

    torch.set_num_threads(args.threads)
    model, processor = load_model_and_processor(model_name(args.model), dtype=args.dtype)
    pred = StampPredictor(model, processor, refine="none")
    ds = SynthRef("val", seed=args.seed, task_weights={"vqa": 1.0})
    rows: dict[str, list] = {k: [] for k in ("vision", "language", "vision_3x3", "language_3x3")}
    rows.update({k: [] for k in ("kind", "colour", "position", "scene")})
    for i in tqdm(range(args.scenes), desc="probe", unit="scene"):
        sample = ds[i]
        pred.set_image(sample.load_image())
        feats, grid = pred.image_features, pred.grid_hw
        image_hidden = image_token_states(pred, "Describe the image.").float().numpy()
        vision = feats.float().numpy()
        imap = sample.meta["instance_map"]
        for obj in sample.meta["scene"]["objects"]:
            cells = object_cells(imap, obj["index"], grid)
            rows["vision"].append(vision[cells].mean(0))
            rows["language"].append(image_hidden[cells].mean(0))
            box = crop_cells(obj["bbox"], (imap.shape[1], imap.shape[0]), grid)
            rows["vision_3x3"].append(vision[box].ravel())
            rows["language_3x3"].append(image_hidden[box].ravel())
            rows["kind"].append(obj["kind"])
            rows["colour"].append(obj["colour"])
            rows["position"].append(_region(sample.meta["scene"], obj))
            rows["scene"].append(i)
    scenes = np.array(rows["scene"])
    report: dict = {"model": args.model or "bundled", "scenes": args.scenes, "seed": args.seed, "probes": {}}
    for target in ("kind", "colour", "position"):
        keep = np.array([v is not None for v in rows[target]])  # (positions near a third's border: none)
        y = np.array([v for v in rows[target] if v is not None])
        split = int((scenes[keep] < int(0.7 * args.scenes)).sum())  # train on the first 70% of scenes
        entry = {"objects": len(y), "train_objects": split, "classes": len(set(y.tolist()))}
        entry["majority"] = round(majority_rate(y, split), 1)
        for source in ("vision", "language", "vision_3x3", "language_3x3"):
            entry[source] = round(fit_probe(np.stack(rows[source])[keep], y, split), 1)
        report["probes"][target] = entry
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        from stamp.outputs import atomic_write_bytes

        atomic_write_bytes(args.out, (text + "\n").encode())
    return 0


def _region(scene: dict, obj: dict) -> str | None:
    """The object's 3x3 grid position as SynthRef's VQA answers name it (None near a third's border)."""
    from types import SimpleNamespace

    from stamp.data.synthref.chat import grid_position

    return grid_position(
        SimpleNamespace(width=scene["width"], height=scene["height"]), SimpleNamespace(centre=obj["centre"])
    )


if __name__ == "__main__":
    sys.exit(main())
