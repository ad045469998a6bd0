"""The Text4Seg-style next-token baseline: the mask after `<|seg|>` spelled as N label tokens.

    python experiments/next_token.py train configs/experiments/ablation-base.yaml model.mask_decoder=next_token
    python experiments/next_token.py eval --model RUN/checkpoints/step_0000600/model --data synthref ...
    python experiments/next_token.py COMMAND ...       # any `stamp` command, with the decoder registered

A model with `mask_decoder: next_token` has no placeholders: its answer spells each mask as one label
token per merged image cell right after the `<|seg|>` (`LABEL_TEXT`: "1" foreground, "0" background,
row-major; a cell is foreground when its foreground fraction is >= 0.5), learned by the ordinary text
loss and decoded greedily one token per cell with the KV cache. The labels stay in the answer's cache,
as in Text4Seg; they are not part of the answer's text. Text4Seg's R-RLE compression and row separators
are not implemented.

Importing this file registers the decoder as `next_token` (`stamp.inference.generation.MaskDecoder`):
generation decodes the labels (`label_step`), training spells every example's masks as labels
(`training_example`) and plans no placeholders, and a model built from scratch stores its label ids
(`StampSettings.label_token_ids`, [background, foreground]). `stamp` itself refuses such a model with
this file's name; `experiments/ablations.py` (its `next_token` run) and `experiments/next_token_probe.py`
import it.
"""

from __future__ import annotations

import sys

import torch

from stamp.inference.generation import DecodeState, MaskDecoder, feed_tokens, register_mask_decoder
from stamp.model.attention import build_hybrid_attention_mask

NAME = "next_token"
LABEL_TEXT = ("0", "1")
"""The background and foreground label of a cell, each one token."""


def label_token_ids(tokenizer) -> list[int]:
    """[background, foreground] token ids of `LABEL_TEXT`; ValueError if a label is not one token."""
    ids = []
    for text in LABEL_TEXT:
        enc = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(enc) != 1:
            raise ValueError(f"the label {text!r} is {len(enc)} tokens in this tokenizer; need exactly one")
        ids.append(enc[0])
    return ids


def model_labels(settings) -> tuple[int, int]:
    """(background, foreground) label ids of a next-token model's `StampSettings`."""
    ids = settings.label_token_ids
    if ids is None or len(ids) != 2:
        raise ValueError(
            f"mask_decoder '{NAME}' needs two label_token_ids [background, foreground], got {ids!r}"
        )
    return ids[0], ids[1]


def as_label_sequence(example: dict, seg_id: int, label_ids: list[int]) -> dict:
    """An encoded example (`StampProcessor.encode_sample`) with each `<|seg|>` followed by its mask spelled
    as N label tokens (row-major, foreground where the cell's foreground fraction is >= 0.5), learned as
    text wherever the `<|seg|>` itself is learned; ignored cells get no loss. No mask targets remain."""
    bg, fg = label_ids
    ids: list[int] = []
    labels: list[int] = []
    k = 0
    for tok, lab in zip(example["input_ids"], example["labels"]):
        ids.append(tok)
        labels.append(lab)
        if tok != seg_id:
            continue
        target = example["targets"][k].flatten().tolist()
        weight = example["weights"][k].flatten().tolist()
        k += 1
        cells = [fg if v >= 0.5 else bg for v in target]
        ids.extend(cells)
        labels.extend(c if lab != -100 and w > 0 else -100 for c, w in zip(cells, weight))
    return {**example, "input_ids": ids, "labels": labels, "targets": [], "weights": []}


def training_example(example: dict, settings) -> dict:
    """`MaskDecoder.training_example`: `as_label_sequence` with the model's `<|seg|>` and label ids."""
    return as_label_sequence(example, settings.seg_token_id, list(model_labels(settings)))


def new_model_settings(tokenizer) -> dict:
    """`MaskDecoder.new_model_settings`: the label ids of `tokenizer`."""
    return {"label_token_ids": label_token_ids(tokenizer)}


def label_step(model, state: DecodeState, step_tokens, finished, seg_rows, requests, grids):
    """`MaskStep` of the baseline: a plain answer step, then, for the rows at `<|seg|>`, their labels."""
    hidden = feed_tokens(model, state, step_tokens, finished)
    row_masks = {}
    if seg_rows:
        hidden, scores = decode_labels(model, state, hidden, seg_rows, grids)
        row_masks = {b: scores[b].view(grids[b]) for b in seg_rows}
    return model.lm_head(hidden[:, 0]), row_masks


def decode_labels(model, state: DecodeState, hidden, seg_rows, grids):
    """For each row at `<|seg|>`, its N = gh * gw cell labels, decoded greedily one token at a time with
    the KV cache, each restricted to the two label tokens; the labels stay in the cache. Rows not at a
    `<|seg|>` (or past their own N) feed masked-out padding meanwhile and keep their positions.

    Args:
        hidden: (B, 1, H) each row's last hidden state (the `<|seg|>`'s for the seg rows).
    Returns:
        (hidden (B, 1, H) after the labels, {row: (N,) float logit(fg) - logit(bg), row-major}); `state`
        is left after the labels.
    """
    device = state.key_block.device
    bg, fg = model_labels(model.stamp)
    bsz = state.key_block.shape[0]
    sizes = {b: grids[b][0] * grids[b][1] for b in seg_rows}
    scores: dict[int, list[torch.Tensor]] = {b: [] for b in seg_rows}
    embed = model.get_input_embeddings()
    h = hidden[:, :1]
    for t in range(max(sizes.values())):
        active = torch.zeros(bsz, dtype=torch.bool)
        for b in seg_rows:
            active[b] = t < sizes[b]
        pair = model.lm_head(h[:, 0])[:, [bg, fg]].float()
        diff = (pair[:, 1] - pair[:, 0]).cpu()
        for b in seg_rows:
            if active[b]:
                scores[b].append(diff[b])
        toks = torch.where(active & (diff > 0), fg, bg).view(bsz, 1).to(device)
        block = torch.where(active, 0, -1).view(bsz, 1).to(device)
        keys = torch.cat([state.key_block, block], dim=1)
        if bool((keys == 0).all()):
            allowed = None
        else:
            here = torch.full((bsz, 1), state.key_block.shape[1], device=device)
            allowed = build_hybrid_attention_mask(keys, block, here, here, model.stamp.attention_mode)
        pos = state.next_pos.view(1, bsz, 1).expand(3, bsz, 1)
        out, state.cache = model.run_language_model(embed(toks), pos, allowed, state.cache)
        act = active.to(device)
        h = torch.where(act.view(bsz, 1, 1), out, h)
        state.next_pos = state.next_pos + act.long()
        state.key_block = keys
    return h, {b: torch.stack(v) for b, v in scores.items()}


register_mask_decoder(
    NAME,
    MaskDecoder(
        step=label_step,
        placeholders=False,
        training_example=training_example,
        new_model_settings=new_model_settings,
    ),
)


USAGE = (
    f"usage: python experiments/{NAME}.py COMMAND [ARGS ...]   (a `stamp` command: train, eval, bench, ...)"
)


def main(argv: list[str] | None = None) -> int:
    """`COMMAND ...`: `stamp COMMAND ...` with this decoder registered (same arguments, same errors)."""
    from stamp.cli import main as stamp_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] in (["-h"], ["--help"]):
        print(f"{__doc__.splitlines()[0]}\n\n{USAGE}\n(`COMMAND --help`: the arguments of `stamp COMMAND`)")
        return 0
    if not argv or argv[0].startswith("-"):
        print(USAGE, file=sys.stderr)
        return 2
    return stamp_main(argv)


if __name__ == "__main__":
    sys.exit(main())
