"""Can the bundled vision tower learn shapes when asked to? A direct per-cell shape signal, then a probe.

    python experiments/shape_signal.py --minutes 20 --out runs/shape-signal     # then:
    python experiments/probe_objects.py --model runs/shape-signal/model --out probe.json

`experiments/probe_objects.py` finds that the image tokens of the bundled model hardly encode an
object's shape (a linear probe: ~22% over 9 kinds, where colour is ~99%), and that this has not moved
from training stage 1 to stage 11. This asks whether that is a limit of the tower (its size, the
28-px cells) or of the training signal: it trains the model's vision tower alone, with a linear head
classifying each cell an object covers (foreground fraction >= 0.5) by the object's kind, on SynthRef
train scenes (`--seed`, default 20: not used by any stage), for `--minutes` (or `--steps`), and saves the whole model
with the updated tower (the head is dropped) to OUT/model. The language model is untouched, so the
saved model is not meant to be used as a chat model; it is the input of the probe.
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model directory (default: the bundled model)")
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument(
        "--steps", type=int, default=0, help="stop after this many steps (default 0: --minutes decides)"
    )
    ap.add_argument("--batch", type=int, default=8, help="images per step")
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--seed", type=int, default=20, help="SynthRef train seed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--anchor",
        type=float,
        default=0.0,
        help="weight of a loss keeping every cell's features near the starting tower's (mean squared "
        "difference over the starting features' variance), so the untouched language model can still "
        "read them (default 0: off)",
    )
    ap.add_argument(
        "--out", required=True, help="folder for the model with the trained tower (must not exist)"
    )
    args = ap.parse_args(argv)
    from pathlib import Path

    out = Path(args.out)
    if out.exists():
        print(f"shape_signal: {out} already exists; choose another --out", file=sys.stderr)
        return 2
    import torch

    from stamp.bundled import model_name
    from stamp.data.synthref import SynthRef
    from stamp.data.synthref.scenes import KINDS
    from stamp.processing import load_model_and_processor

    sys.path.insert(0, str(Path(__file__).parent))
    from probe_objects import object_cells

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, processor = load_model_and_processor(model_name(args.model), dtype="float32")
    tower = model.model.visual if hasattr(model.model, "visual") else model.visual
    for p in model.parameters():
        p.requires_grad_(False)
    for p in tower.parameters():
        p.requires_grad_(True)
    head = torch.nn.Linear(model.config.get_text_config().hidden_size, len(KINDS))
    if args.anchor > 0:
        import copy

        start_model = copy.deepcopy(model).eval()  # (frozen: its parameters never reach the optimizer)
    params = [p for p in tower.parameters()] + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    ds = SynthRef("train", seed=args.seed, task_weights={"vqa": 1.0}, image_size_range=(256, 448))
    t0, step, index, window = time.time(), 0, 0, []
    model.train()
    while (step < args.steps) if args.steps > 0 else (time.time() - t0 < args.minutes * 60):
        samples = [ds[index + k] for k in range(args.batch)]
        index += args.batch
        encs = [processor.encode_image(s.load_image()) for s in samples]
        pv = torch.cat([e.pixel_values for e in encs])
        grid = torch.stack([e.grid_thw for e in encs])
        feats = model.encode_images(pv, grid)
        xs, ys = [], []
        for s, e, f in zip(samples, encs, feats):
            cells_hw = (int(e.grid_thw[1]) // model.merge_size, int(e.grid_thw[2]) // model.merge_size)
            for obj in s.meta["scene"]["objects"]:
                cells = object_cells(s.meta["instance_map"], obj["index"], cells_hw)
                xs.append(f[cells])
                ys += [KINDS.index(obj["kind"])] * len(cells)
        logits = head(torch.cat(xs))
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor(ys))
        if args.anchor > 0:
            with torch.no_grad():
                start = torch.cat(list(start_model.encode_images(pv, grid)))
            drift = (torch.cat(list(feats)) - start).pow(2).mean() / start.var()
            loss = loss + args.anchor * drift
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step += 1
        with torch.no_grad():
            drift_value = drift.item() if args.anchor > 0 else 0.0
            window.append(
                (loss.item(), (logits.argmax(1) == torch.tensor(ys)).float().mean().item(), drift_value)
            )
        if step % 20 == 0:
            mean_loss = sum(w[0] for w in window) / len(window)
            acc = 100 * sum(w[1] for w in window) / len(window)
            drift_mean = sum(w[2] for w in window) / len(window)
            print(
                f"step {step} ({time.time() - t0:.0f} s, {index} images): loss {mean_loss:.3f}, "
                f"cell accuracy {acc:.1f}%" + (f", drift {drift_mean:.4f}" if args.anchor > 0 else "")
            )
            window = []
    model.eval()
    model.save_stamp(out / "model", processor)
    print(f"trained the vision tower for {step} steps ({index} images); wrote {out / 'model'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
