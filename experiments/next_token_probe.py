"""Teacher-forced probe of a next-token (Text4Seg-style) model: does it rank foreground cells above
background ones even when greedy decoding labels everything background?

    python experiments/next_token_probe.py --model experiments/results/next_token/checkpoints/step_0000600/model

For single-target referring samples of SynthRef val (224-256 px), the ground-truth label sequence is fed
after `<|seg|>` and each cell's score logit(fg) - logit(bg) is read from ONE causal forward. Prints the
number of foreground / background cells, the fraction of each scored above 0 (what greedy decoding
would label foreground given a correct prefix) and the AUC of the scores (0.5 = no signal).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from next_token import as_label_sequence, load_model, model_labels  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a model trained by experiments/next_token.py")
    ap.add_argument("--n", type=int, default=30, help="referring samples")
    args = ap.parse_args(argv)
    import torch

    from stamp.data.synthref import SynthRef

    torch.set_num_threads(1)
    try:
        model, processor = load_model(args.model)
        model.eval()
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    st = model.stamp
    bg, fg = model_labels(model, processor.tokenizer)
    ds = SynthRef("val", seed=0, task_weights={"refer": 1.0}, image_size_range=(224, 256))
    scores: dict[int, list[float]] = {fg: [], bg: []}
    for i in range(args.n):
        ex = as_label_sequence(processor.encode_sample(ds[i]), st.seg_token_id, [bg, fg])
        b = processor.collate([ex])
        ids = b["input_ids"]
        length = ids.shape[1]
        with torch.no_grad():
            feats = model.encode_images(b["pixel_values"], b["image_grid_thw"])
            embeds = model.embed_conversation(ids, feats)
            pos = model.conversation_positions(
                ids, b["attention_mask"], b["mm_token_type_ids"], b["image_grid_thw"]
            )
            causal = torch.ones(length, length, dtype=torch.bool).tril()[None, None]
            hidden, _ = model.run_language_model(embeds, pos, causal)
            logits = model.lm_head(hidden[0]).float()
        tokens = ids[0].tolist()
        j = tokens.index(st.seg_token_id) + 1
        while j < length and tokens[j] in (bg, fg):
            scores[tokens[j]].append(float(logits[j - 1, fg] - logits[j - 1, bg]))  # predicted at j - 1
            j += 1
    pos_s, neg_s = np.array(scores[fg]), np.array(scores[bg])
    report = {
        "n": args.n,
        "fg_cells": len(pos_s),
        "bg_cells": len(neg_s),
        "fg_scored_fg": round(float((pos_s > 0).mean()), 3) if len(pos_s) else None,
        "bg_scored_fg": round(float((neg_s > 0).mean()), 3) if len(neg_s) else None,
        "auc": round(float((pos_s[:, None] > neg_s[None, :]).mean()), 3)
        if len(pos_s) and len(neg_s)
        else None,
    }
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
