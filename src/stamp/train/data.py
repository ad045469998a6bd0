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


class TrainStream:
    """Deterministic batches: `batch(indices)` depends only on the indices and the config."""

    def __init__(self, cfg: DataConfig, processor, seed: int = 0):
        sources = {f"{i}:{s.kind}": open_source(s, cfg) for i, s in enumerate(cfg.sources)}
        weights = {f"{i}:{s.kind}": s.weight for i, s in enumerate(cfg.sources)}
        self.mixture = MixtureDataset(sources, weights, seed=seed)
        self.processor = processor

    def batch(self, indices) -> dict:
        examples = [self.processor.encode_sample(self.mixture[i]) for i in indices]
        return self.processor.collate(examples)
