"""Deepen a trained STAMP model without changing what it computes (block expansion).

A small model that has stopped improving on more data needs more capacity; training a larger one from
scratch throws away what the small one learned. `grow_depth` inserts new decoder layers into the
language model, each a copy of the layer before it with its two output projections (attention
`o_proj` and MLP `down_proj`) set to zero. A pre-norm decoder layer adds its output to the residual
stream, so a layer whose output projections are zero is the identity: the grown model computes
exactly what the small one did (the tests compare logits and masks), and training starts from there.
The zeroed projections receive gradients at once; the rest of each new layer follows as they grow.
This is the block expansion of LLaMA Pro (Wu et al., 2024), applied here to STAMP's Qwen2-VL text stack.

    python experiments/grow.py MODEL_DIR --layers 8 --out GROWN_DIR [--force]
"""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import torch
from torch import nn


def insertion_points(current: int, target: int) -> list[int]:
    """Indices of the original layers after which a copy goes, spread evenly (each at most once)."""
    added = target - current
    if current < 1 or added < 1 or added > current:
        raise ValueError(
            f"can grow a {current}-layer model to {current + 1}..{2 * current} layers, not {target}"
        )
    return sorted({round((j + 1) * current / added) - 1 for j in range(added)})


@torch.no_grad()
def grow_depth(model, layers: int) -> list[int]:
    """Grow `model` (a StampModel) in place to `layers` decoder layers; returns the new layers' indices.

    The new layers are identity maps at first, so outputs are unchanged (up to nothing: the residual
    adds exact zeros)."""
    lm = model.model.language_model
    text = model.config.text_config
    kinds = getattr(text, "layer_types", None)
    if kinds is not None and len(set(kinds)) > 1:
        raise ValueError("grow_depth handles models whose layers all use the same attention kind")
    old = list(lm.layers)
    after = set(insertion_points(len(old), layers))
    grown, new_idx = [], []
    for i, layer in enumerate(old):
        grown.append(layer)
        if i in after:
            twin = copy.deepcopy(layer)
            for proj in (twin.self_attn.o_proj, twin.mlp.down_proj):
                nn.init.zeros_(proj.weight)
                if proj.bias is not None:
                    nn.init.zeros_(proj.bias)
            new_idx.append(len(grown))
            grown.append(twin)
    for k, layer in enumerate(grown):
        layer.self_attn.layer_idx = k  # the KV cache is indexed by it
    lm.layers = nn.ModuleList(grown)
    if kinds is not None:
        text.layer_types = [kinds[0]] * layers
    text.num_hidden_layers = layers
    return new_idx


def main(argv: list[str] | None = None) -> int:
    import argparse

    from stamp.processing import load_model_and_processor

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir", help="a STAMP model directory")
    ap.add_argument("--layers", type=int, required=True, help="decoder layers of the grown model")
    ap.add_argument("--out", required=True, help="where to write the grown model (a new directory)")
    ap.add_argument("--force", action="store_true", help="overwrite --out")
    args = ap.parse_args(argv)
    try:
        out = Path(args.out)
        if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
            raise FileExistsError(f"{out} exists and is not empty; use --force to overwrite")
        model, processor = load_model_and_processor(args.model_dir)
        before = model.config.text_config.num_hidden_layers
        params = sum(p.numel() for p in model.parameters())
        new = grow_depth(model, args.layers)
        model.save_stamp(args.out, processor, overwrite=args.force)
    except (ValueError, OSError) as e:  # (StampModelError is a ValueError)
        print(f"grow: error: {e}", file=sys.stderr)
        return 2
    grown = sum(p.numel() for p in model.parameters())
    print(
        f"grew {args.model_dir} from {before} to {args.layers} layers (new: {new}); "
        f"parameters {params / 1e6:.2f}M -> {grown / 1e6:.2f}M; wrote {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
