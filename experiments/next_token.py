"""The Text4Seg-style next-token baseline: the mask after `<|seg|>` spelled as N label tokens.

    python experiments/next_token.py train configs/experiments/ablation-base.yaml [key=value ...] [--resume]
    python experiments/next_token.py eval --model RUN/checkpoints/step_0000600/model --data synthref ...

A next-token model has no placeholders: its answer spells each mask as one label token per merged image
cell right after the `<|seg|>` (`LABEL_TEXT`: "1" foreground, "0" background, row-major; a cell is
foreground when its foreground fraction is >= 0.5), learned by the ordinary text loss and decoded
greedily one token per cell with the KV cache. The labels stay in the answer's cache, as in Text4Seg;
they are not part of the answer's text. Text4Seg's R-RLE compression and row separators are not
implemented.

The script is built from STAMP's public pieces and STAMP knows nothing of it:
- `train` runs STAMP's trainer (`stamp.train.trainer.train`) on a model from scratch, with every
  example's masks spelled as labels (`LabelSpelling`), no placeholders planned, and `MARKER_FILE`
  written into each checkpoint's model folder (`training_extras`);
- `eval` runs STAMP's evaluation (`stamp.eval.runner.run_eval`, the arguments of `stamp eval`) with
  `LabelPredictor`, whose answers come from this file's own generation loop (`generate`: STAMP's prompt
  pass, then plain decode steps and the label steps of `decode_labels`).

A next-token model is a STAMP checkpoint (weights, config, tokenizer) plus `MARKER_FILE`
(`next_token.json`, its label token ids [background, foreground]), which marks it as this script's: the
script refuses a model without it. STAMP itself cannot tell such a model from its own; checkpoints
written before this script kept its own file carry `"mask_decoder": "next_token"` in their config's
"stamp" section, which `stamp` refuses naming this script, and which the script still reads
(`readable_path`). `experiments/ablations.py` (its `next_token` run) and
`experiments/next_token_probe.py` use this file.
"""

from __future__ import annotations

import argparse
import atexit
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from stamp.inference.generation import (
    DecodeState,
    GenerationConfig,
    GenerationOutput,
    prefill,
    repeating_period,
)
from stamp.inference.predictor import StampPredictor
from stamp.model.attention import build_hybrid_attention_mask

NAME = "next_token"
LABEL_TEXT = ("0", "1")
"""The background and foreground label of a cell, each one token."""
MARKER_FILE = "next_token.json"
"""The file in a next-token model's folder: {"label_token_ids": [background, foreground]}."""


def label_token_ids(tokenizer) -> list[int]:
    """[background, foreground] token ids of `LABEL_TEXT`; ValueError if a label is not one token."""
    ids = []
    for text in LABEL_TEXT:
        enc = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(enc) != 1:
            raise ValueError(f"the label {text!r} is {len(enc)} tokens in this tokenizer; need exactly one")
        ids.append(enc[0])
    return ids


def marker_text(labels: list[int]) -> str:
    """The content of `MARKER_FILE` for label ids [background, foreground]."""
    return json.dumps({"label_token_ids": [int(i) for i in labels]}) + "\n"


def model_labels(model, tokenizer) -> tuple[int, int]:
    """(background, foreground) label ids of a next-token model: its tokenizer's `LABEL_TEXT`, checked
    against `MARKER_FILE` where the model was loaded from a folder that holds it."""
    bg, fg = label_token_ids(tokenizer)
    folder = getattr(getattr(model, "checkpoint", None), "path", None)
    if folder is not None and (Path(folder) / MARKER_FILE).is_file():
        saved = json.loads((Path(folder) / MARKER_FILE).read_text())["label_token_ids"]
        if list(saved) != [bg, fg]:
            raise ValueError(f"{folder}: {MARKER_FILE} names labels {saved}, its tokenizer [{bg}, {fg}]")
    return bg, fg


# ---------------------------------------------------------------- model folders
def readable_path(path: str | Path) -> Path:
    """`path` if it is a next-token model folder (`MARKER_FILE`); for one written before the marker
    (`"mask_decoder": "next_token"` in its config), a temporary folder of links to its files with the
    marker and a config STAMP loads (removed at exit). ValueError for any other folder."""
    path = Path(path)
    if (path / MARKER_FILE).is_file():
        return path
    config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else {}
    section = dict(config.get("stamp") or {})
    if section.get("mask_decoder") != NAME:
        raise ValueError(f"{path} is not a next-token model (no {MARKER_FILE})")
    labels = section.pop("label_token_ids")
    section.pop("mask_decoder")
    tmp = Path(tempfile.mkdtemp(prefix=f"{NAME}-"))
    atexit.register(shutil.rmtree, tmp, True)
    for f in path.iterdir():
        if f.name != "config.json":
            (tmp / f.name).symlink_to(f.resolve())
    (tmp / "config.json").write_text(json.dumps({**config, "stamp": section}, indent=2))
    (tmp / MARKER_FILE).write_text(marker_text(labels))
    return tmp


def load_model(path: str | Path, **kwargs):
    """(a next-token model from its folder (`readable_path`), its processor)."""
    from stamp.processing import load_model_and_processor

    return load_model_and_processor(readable_path(path), **kwargs)


def save_model(model, processor, path: str | Path) -> None:
    """Save a next-token model: STAMP's checkpoint plus `MARKER_FILE`."""
    model.save_stamp(path, processor)
    (Path(path) / MARKER_FILE).write_text(marker_text(list(model_labels(model, processor.tokenizer))))


# ---------------------------------------------------------------- training
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


class LabelSpelling:
    """The trainer's `example_transform`: `as_label_sequence` with the model's `<|seg|>` (from its
    `StampSettings`) and these label ids (picklable into data workers)."""

    def __init__(self, label_ids: list[int]):
        self.label_ids = list(label_ids)

    def __call__(self, example: dict, settings) -> dict:
        return as_label_sequence(example, settings.seg_token_id, self.label_ids)


def training_extras(cfg) -> dict:
    """The `Trainer` keyword arguments that make a STAMP training run train the baseline: masks spelled
    as labels, no placeholders, `MARKER_FILE` in each checkpoint's model. ValueError for a config the
    baseline cannot train (a pretrained model; a periodic validation, which decodes placeholders)."""
    from stamp.train.tokenizer import SHIPPED_TOKENIZER, load_synth_tokenizer

    if cfg.model.init != "scratch":
        raise ValueError(f"the {NAME} baseline trains from scratch only (model.init=scratch)")
    if cfg.run.eval_every and cfg.run.eval_every <= cfg.run.steps:
        raise ValueError(
            f"run.eval_every must be 0 for the {NAME} baseline (the trainer's validation decodes "
            f"placeholders); evaluate its checkpoints with `python experiments/{NAME}.py eval`"
        )
    labels = label_token_ids(load_synth_tokenizer(cfg.model.tokenizer or SHIPPED_TOKENIZER))
    return {
        "example_transform": LabelSpelling(labels),
        "placeholders": False,
        "model_files": {MARKER_FILE: marker_text(labels)},
    }


# ---------------------------------------------------------------- decoding
def feed(model, state: DecodeState, step_tokens: list[int], finished: list[bool]) -> torch.Tensor:
    """Feed one token per row (a finished row: masked-out padding) into the cache as a plain answer step
    and advance `state`. Returns the last hidden states (B, 1, H)."""
    device = state.key_block.device
    bsz, hist = state.key_block.shape
    tok = torch.tensor(step_tokens, device=device).view(bsz, 1)
    pos = state.next_pos.view(1, bsz, 1).expand(3, bsz, 1)
    new_block = torch.tensor([[-1 if done else 0] for done in finished], device=device)
    keys = torch.cat([state.key_block, new_block], dim=1)
    here = torch.full((bsz, 1), hist, device=device)
    allowed = build_hybrid_attention_mask(keys, new_block, here, here, model.stamp.attention_mode)
    hidden, state.cache = model.run_language_model(
        model.get_input_embeddings()(tok), pos, allowed, state.cache
    )
    state.appended(finished)
    return hidden


def decode_labels(model, state: DecodeState, hidden, seg_rows, grids, labels: tuple[int, int]):
    """For each row at `<|seg|>`, its N = gh * gw cell labels, decoded greedily one token at a time with
    the KV cache, each restricted to the two label tokens; the labels stay in the cache. Rows not at a
    `<|seg|>` (or past their own N) feed masked-out padding meanwhile and keep their positions.

    Args:
        hidden: (B, 1, H) each row's last hidden state (the `<|seg|>`'s for the seg rows).
        labels: (background, foreground) token ids.
    Returns:
        (hidden (B, 1, H) after the labels, {row: (N,) float logit(fg) - logit(bg), row-major}); `state`
        is left after the labels.
    """
    device = state.key_block.device
    bg, fg = labels
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


@torch.no_grad()
def generate(model, labels, requests, cfg: GenerationConfig, pad_id: int, eos_ids: set[int], on_event=None):
    """Greedy answers to a left-padded batch of `GenerationRequest`s, with each `<|seg|>`'s mask decoded
    as labels right after it (`decode_labels`); the same loop, finish reasons and events as STAMP's
    `stamp.inference.generation.generate`; `labels`: the model's (background, foreground) ids
    (`model_labels`). Returns one `GenerationOutput` per request."""
    if cfg.do_sample:
        raise ValueError(f"the {NAME} baseline decodes greedily only")
    seg_id = model.stamp.seg_token_id
    t0 = time.perf_counter()
    pre = prefill(model, requests, pad_id)
    logits = model.lm_head(pre.hidden[:, -1])
    state = DecodeState(pre.cache, pre.key_block, pre.positions[:, :, -1].max(0).values + 1)
    merge = model.merge_size
    grids = [(int(r.grid_thw[1]) // merge, int(r.grid_thw[2]) // merge) for r in requests]
    bsz = len(requests)
    tokens: list[list[int]] = [[] for _ in requests]
    masks: list[list[torch.Tensor]] = [[] for _ in requests]
    finished, reasons = [False] * bsz, ["length"] * bsz
    limits = [
        len(r.forced_ids) + (cfg.max_new_tokens if r.max_new_tokens is None else r.max_new_tokens)
        for r in requests
    ]
    stop = cfg.repetition_stop is not False
    watch = [stop if r.repetition_stop is None else r.repetition_stop for r in requests]
    total = max(limits)
    for step in range(total):
        chosen = logits.argmax(-1).tolist()
        step_tokens, seg_rows, looping = [], [], []
        for b, r in enumerate(requests):
            free = step >= len(r.forced_ids)
            tok = chosen[b] if free else r.forced_ids[step]
            finished[b] = finished[b] or step >= limits[b]
            if finished[b]:
                tok = pad_id
            elif tok in eos_ids:
                finished[b], reasons[b] = True, "eos"
            else:
                tokens[b].append(tok)
                if on_event is not None:
                    on_event("token", b, tok)
                if tok == seg_id and cfg.predict_masks:
                    seg_rows.append(b)
                if watch[b] and free and repeating_period(tokens[b]):
                    looping.append(b)
                    reasons[b] = "repetition"
            step_tokens.append(tok)
        if not seg_rows and (step == total - 1 or all(f or b in looping for b, f in enumerate(finished))):
            break
        hidden = feed(model, state, step_tokens, finished)
        if seg_rows:
            hidden, scores = decode_labels(model, state, hidden, seg_rows, grids, labels)
            for b in seg_rows:
                masks[b].append(scores[b].view(grids[b]).float().cpu())
                if on_event is not None:
                    on_event("mask", b, len(masks[b]) - 1, masks[b][-1])
        logits = model.lm_head(hidden[:, 0])
        for b in looping:
            finished[b] = True
        if all(finished):
            break
    timings = {"generate": time.perf_counter() - t0}
    return [GenerationOutput(tokens[b], masks[b], dict(timings), reasons[b]) for b in range(bsz)]


class LabelPredictor(StampPredictor):
    """`StampPredictor` whose answers (`chat`, `predict_batch`, `chat_batch`) come from `generate`: masks
    decoded as labels. Refuses a model loaded from a folder that is not a next-token model."""

    def __init__(self, model, *args, **kwargs):
        folder = getattr(getattr(model, "checkpoint", None), "path", None)
        if folder is not None and not (Path(folder) / MARKER_FILE).is_file():
            raise ValueError(f"{folder} is not a next-token model (no {MARKER_FILE})")
        super().__init__(model, *args, **kwargs)

    def _generate(self, requests, cfg: GenerationConfig, on_event):
        """`StampPredictor._generate` (where every answer of the predictor is generated), with this
        baseline's `generate`: masks decoded as labels."""
        labels = model_labels(self.model, self.processor.tokenizer)
        return generate(self.model, labels, requests, cfg, self.pad_id, self.eos_ids, on_event)


# ---------------------------------------------------------------- commands
def train_command(config: str, overrides: list[str], *, resume: bool = False, progress: bool = True):
    """Train the baseline per a STAMP training config; returns the last checkpoint folder."""
    from stamp.recipes import find_recipe
    from stamp.train.config import TrainConfig
    from stamp.train.trainer import train
    from stamp.yaml_config import load_config

    cfg = load_config(TrainConfig, find_recipe(config), overrides)
    return train(cfg, resume=resume, progress=progress, **training_extras(cfg))


def eval_command(args) -> dict:
    """`stamp eval` with `LabelPredictor`, on a next-token model (`readable_path`)."""
    from dataclasses import fields

    from stamp.eval.runner import EvalJob, run_eval

    if not args.model:
        raise ValueError("--model: a next-token model folder is needed")
    given = vars(args)
    job = EvalJob(
        **{f.name: given[f.name] for f in fields(EvalJob) if f.name in given},
        overwrite=args.force,
        repetition_stop=not args.no_repetition_stop,
    )
    job.model = str(readable_path(args.model))
    return run_eval(job, progress=not args.no_progress, predictor_type=LabelPredictor)


def build_parser() -> argparse.ArgumentParser:
    from stamp.cli import eval as stamp_eval

    ap = argparse.ArgumentParser(prog=f"python experiments/{NAME}.py", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    tr = sub.add_parser("train", help="train the baseline per a STAMP training config")
    tr.add_argument("config", help="a shipped recipe's name or a YAML file")
    tr.add_argument("overrides", nargs="*", help="overrides like run.steps=100")
    tr.add_argument("--resume", action="store_true", help="continue from the newest checkpoint")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    stamp_eval.add_parser(sub)  # `eval`: the arguments of `stamp eval`
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
    from stamp.model.loading import StampModelError

    args = parse(build_parser(), sys.argv[1:] if argv is None else argv)
    try:
        if args.command == "train":
            last = train_command(
                args.config, args.overrides, resume=args.resume, progress=not args.no_progress
            )
            if last is not None:
                print(f"last checkpoint: {last} (model: {last / 'model'})")
            return 0
        results = eval_command(args)
    except (StampModelError, ValueError, FileExistsError) as err:
        print(f"{NAME}: {err}", file=sys.stderr)
        return 2
    print(
        " ".join(
            f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in results["metrics"].items()
        )
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
