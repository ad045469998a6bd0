"""The training data stream: sample index -> StampSample -> encoded -> collated batch."""

from __future__ import annotations

from stamp.data.mixture import MixtureDataset
from stamp.train.config import DataConfig, DataSource


def open_source(src: DataSource, cfg: DataConfig):
    """One data set of the mixture (SynthRef is generated; the others are read from `src.path`)."""
    if src.kind == "synthref":
        from stamp.data.synthref import SynthRef

        return SynthRef(
            src.split,
            seed=cfg.seed,
            task_weights=cfg.task_weights,
            image_size_range=tuple(cfg.image_size_range),
        )
    from stamp.data.registry import open_dataset

    if not src.path:
        raise ValueError(f"data source {src.kind!r} needs a path")
    return open_dataset(src.kind, src.path, src.split, image_root=src.image_root)


def as_label_sequence(example: dict, seg_id: int, label_ids: list[int]) -> dict:
    """The next-token baseline's version of an encoded example: each `<|seg|>` is followed by its mask
    spelled as N label tokens (row-major, foreground where the cell's foreground fraction is >= 0.5),
    learned as text wherever the `<|seg|>` itself is learned; ignored cells get no loss. No mask targets.
    """
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


class TrainStream:
    """Deterministic batches: `batch(indices)` depends only on the indices and the config.

    `next_token=(seg_id, [bg_id, fg_id])` gives the next-token baseline's examples (`as_label_sequence`).
    """

    def __init__(
        self, cfg: DataConfig, processor, seed: int = 0, next_token: tuple[int, list[int]] | None = None
    ):
        sources = {f"{i}:{s.kind}": open_source(s, cfg) for i, s in enumerate(cfg.sources)}
        weights = {f"{i}:{s.kind}": s.weight for i, s in enumerate(cfg.sources)}
        self.mixture = MixtureDataset(sources, weights, seed=seed)
        self.processor = processor
        self.next_token = next_token

    def batch(self, indices) -> dict:
        examples = [self.processor.encode_sample(self.mixture[i]) for i in indices]
        if self.next_token is not None:
            examples = [as_label_sequence(e, *self.next_token) for e in examples]
        return self.processor.collate(examples)
