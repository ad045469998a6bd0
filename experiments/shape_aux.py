"""An auxiliary shape loss: training STAMP with a per-cell shape classifier on the vision features.

    python experiments/shape_aux.py train configs/tiny-synth/final.yaml --weight 0.3
    python experiments/shape_aux.py train CONFIG [key=value ...] [--weight W] [--resume] [--no-progress]

The bundled model's image tokens hardly encode an object's shape (`experiments/probe_objects.py`).
This objective asks the vision tower for it during the whole model's training: a linear head on the
tower's merged cell features (what the language model receives for each 28x28 cell) classifies every
cell that one object covers (foreground fraction >= 0.5) by the object's kind, with cross-entropy;
background, mixed cells and samples without a scene (data other than SynthRef) are ignored. `--weight`
is its weight beside STAMP's losses; the step's metrics log it as `shape_loss`.

`train` runs STAMP's trainer (`stamp.train.trainer.train`, the arguments of `stamp train`) with this
term passed as one of its extra losses (`ShapeObjective`, a `stamp.train.step.ExtraLoss`): the head
is trained with the model, saved in each checkpoint's `auxiliary.safetensors` (`shape_aux.head.weight`,
`shape_aux.head.bias`), restored on `--resume` (which continues exactly), and never part of the
exported model.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Iterator

import torch
from torch import nn

from stamp.train.step import ExtraLoss

NAME = "shape_aux"
IGNORE = -100
"""The label of a cell without a kind (cross-entropy's ignore index)."""


def cell_kind_labels(meta: dict, grid_hw: tuple[int, int]) -> torch.Tensor:
    """Each cell's shape label for one sample.

    Args:
        meta: the sample's `meta`; SynthRef's holds `instance_map` ((H, W) uint8, object index + 1 per
            pixel, 0 background) and `scene` (`objects`: each with `index` and `kind`).
        grid_hw: (gh, gw) merged 28x28 cells of the encoded image.

    Returns:
        (gh * gw,) long, row-major: the index in SynthRef's KINDS of the object covering at least half
        of each cell, or IGNORE for background, mixed cells and samples without a scene.
    """
    from stamp.data.synthref.scenes import KINDS
    from stamp.model.losses import patch_targets

    labels = torch.full(tuple(grid_hw), IGNORE, dtype=torch.long)
    imap, scene = meta.get("instance_map"), meta.get("scene")
    if imap is None or not scene:
        return labels.flatten()
    for obj in scene["objects"]:
        fraction, _ = patch_targets(imap == obj["index"] + 1, grid_hw)
        labels[fraction >= 0.5] = KINDS.index(obj["kind"])
    return labels.flatten()


def vision_tower(model: nn.Module) -> nn.Module:
    """The Qwen2-VL vision tower inside `model` (also under a peft wrapper)."""
    for name, module in model.named_modules():
        if name.endswith("visual"):
            return module
    raise ValueError(f"{NAME} needs a model with a vision tower (`visual`)")


class ShapeObjective(ExtraLoss):
    """Cross-entropy of a Linear(hidden, len(KINDS)) head on every image's merged cell features."""

    def __init__(self, model: nn.Module):
        super().__init__()
        from stamp.data.synthref.scenes import KINDS

        self.head = nn.Linear(model.config.get_text_config().hidden_size, len(KINDS))

    def batch_fields(self, samples: list, examples: list[dict]) -> dict[str, torch.Tensor]:
        """`cell_kinds`: (total cells of the batch's images,) long, the images in batch order."""
        kinds = [
            cell_kind_labels(s.meta, e["image"].grid_hw) for s, e in zip(samples, examples) if e.get("image")
        ]
        return {"cell_kinds": torch.cat(kinds) if kinds else torch.zeros(0, dtype=torch.long)}

    @contextlib.contextmanager
    def observe(self, model: nn.Module) -> Iterator[list[torch.Tensor]]:
        """Yields the list that the forward fills with each vision-tower call's merged cell features,
        (cells, hidden) each, in batch order."""
        seen: list[torch.Tensor] = []

        def keep(_module, _inputs, output):
            seen.append(output.pooler_output)

        hook = vision_tower(model).register_forward_hook(keep)
        try:
            yield seen
        finally:
            hook.remove()

    def loss(self, out, observed: list[torch.Tensor], cell_kinds: torch.Tensor):
        kinds = cell_kinds
        if observed:
            feats = torch.cat(observed)
        else:
            feats = kinds.new_zeros((0, self.head.in_features), dtype=torch.float)
        if feats.shape[0] != kinds.shape[0]:
            raise RuntimeError(f"{NAME}: {kinds.shape[0]} cell labels for {feats.shape[0]} cells")
        logits = self.head(feats.to(self.head.weight.dtype))
        if bool((kinds >= 0).any()):
            shape_loss = nn.functional.cross_entropy(logits.float(), kinds, ignore_index=IGNORE)
        else:  # keeps the head in the graph (data parallelism) with a zero loss
            shape_loss = logits.sum() * 0.0
        return shape_loss, {"shape_loss": shape_loss}


USAGE = f"usage: python experiments/{NAME}.py train CONFIG [key=value ...] [--weight W] [--resume] [--no-progress]"
DEFAULT_WEIGHT = 0.3
"""The weight of the shape loss unless `--weight` gives another (that of the bundled model's last run)."""


def train_command(
    config: str, overrides: list[str], *, weight: float = DEFAULT_WEIGHT, resume=False, progress=True
):
    """Train per a STAMP training config with the shape loss at `weight`; returns the last checkpoint."""
    from stamp.recipes import find_recipe
    from stamp.train.config import TrainConfig
    from stamp.train.trainer import train
    from stamp.yaml_config import load_config

    cfg = load_config(TrainConfig, find_recipe(config), overrides)
    from stamp.eval.validation import validation_for

    extra = {NAME: (ShapeObjective, weight)}
    return train(cfg, resume=resume, progress=progress, extra_losses=extra, **validation_for(cfg))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=f"python experiments/{NAME}.py", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train per a STAMP training config, with the shape loss")
    tr.add_argument("config", help="a shipped recipe's name or a YAML file")
    tr.add_argument("overrides", nargs="*", help="overrides like run.steps=100")
    tr.add_argument(
        "--weight",
        type=float,
        default=DEFAULT_WEIGHT,
        help=f"the shape loss's weight (default {DEFAULT_WEIGHT})",
    )
    tr.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    return ap


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """`parser.parse_args`, with key=value overrides also accepted after an option (as `stamp train`)."""
    args, extra = parser.parse_known_args(argv)
    if (
        extra
        and getattr(args, "overrides", None) is not None
        and all("=" in e and not e.startswith("-") for e in extra)
    ):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] not in (["train"], ["-h"], ["--help"]):
        print(USAGE, file=sys.stderr)
        return 2
    args = parse(build_parser(), argv)
    if args.weight < 0:
        print(f"{NAME}: --weight must be >= 0, got {args.weight}", file=sys.stderr)
        return 2
    progress = not args.no_progress
    last = train_command(
        args.config, args.overrides, weight=args.weight, resume=args.resume, progress=progress
    )
    if last is not None:
        print(f"last checkpoint: {last} (model: {last / 'model'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
