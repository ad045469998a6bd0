"""The training data stream: sample index -> StampSample -> encoded -> collated batch."""

from __future__ import annotations

from collections.abc import Callable

import torch

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
            vqa_kind_weights=cfg.vqa_kind_weights,
        )
    from stamp.data.registry import open_dataset

    if not src.path:
        raise ValueError(f"data source {src.kind!r} needs a path")
    return open_dataset(src.kind, src.path, src.split, image_root=src.image_root)


class TrainStream:
    """Deterministic batches: `batch(indices)` depends only on the indices and the config.

    `example_transform(example) -> example`: rewrites each encoded example before collation (e.g. its
    masks spelled as text: `Trainer(example_transform=...)`).
    `pixel_dtype`: the dtype pixel values are delivered in. bf16 under bf16 autocast halves the bytes
    moved per batch (worker -> main process -> device, ~88 MB of fp32 per 64 SynthRef samples) and
    changes nothing: the vision tower casts its input to its fp32 weights and autocast rounds that to
    bf16 again, and bf16 -> fp32 -> bf16 is exact.
    `planner` (a `stamp.model.batch_plan.BatchPlanner`): adds the training step's plan as
    `batch["plan"]`, so data-loader workers do that bookkeeping too.
    `extra_fields(samples, examples) -> {key: tensor}`: more tensors for the batch, from its samples and
    their encodings (before `example_transform`): the extra loss terms' fields
    (`stamp.train.step.ExtraLoss.batch_fields`).
    """

    def __init__(
        self,
        cfg: DataConfig,
        processor,
        seed: int = 0,
        example_transform: Callable[[dict], dict] | None = None,
        pixel_dtype: torch.dtype | None = None,
        planner=None,
        extra_fields: Callable[[list, list[dict]], dict[str, torch.Tensor]] | None = None,
    ):
        sources = {f"{i}:{s.kind}": open_source(s, cfg) for i, s in enumerate(cfg.sources)}
        weights = {f"{i}:{s.kind}": s.weight for i, s in enumerate(cfg.sources)}
        self.mixture = MixtureDataset(sources, weights, seed=seed)
        self.processor = processor
        self.example_transform = example_transform
        self.pixel_dtype = pixel_dtype
        self.planner = planner
        self.extra_fields = extra_fields

    def batch(self, indices) -> dict:
        samples = [self.mixture[i] for i in indices]
        examples = [self.processor.encode_sample(s) for s in samples]
        extra = self.extra_fields(samples, examples) if self.extra_fields is not None else {}
        if self.example_transform is not None:
            examples = [self.example_transform(e) for e in examples]
        batch = self.processor.collate(examples)
        if self.pixel_dtype is not None and "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(self.pixel_dtype)
        if self.planner is not None:
            batch["plan"] = self.planner(batch)
        batch.update(extra)
        return batch


class MicroBatches(torch.utils.data.Dataset):
    """Micro-batch `j` of one rank: optimizer step j // grad_accum, micro-step j % grad_accum.

    The sample indices follow the trainer's layout (step x global batch, then micro-step x world + rank),
    so a DataLoader over any range of `j`, with any number of workers, yields exactly the batches the
    training loop would build itself.
    """

    def __init__(self, stream: TrainStream, *, batch_size: int, grad_accum: int, rank: int, world: int):
        self.stream, self.batch_size, self.grad_accum = stream, batch_size, grad_accum
        self.rank, self.world = rank, world

    def indices(self, j: int) -> range:
        step, micro = divmod(j, self.grad_accum)
        start = step * self.batch_size * self.grad_accum * self.world
        start += (micro * self.world + self.rank) * self.batch_size
        return range(start, start + self.batch_size)

    def __getitem__(self, j: int) -> dict:
        return self.stream.batch(self.indices(j))


def micro_batch_loader(batches: MicroBatches, first: int, end: int, *, num_workers: int, pin_memory: bool):
    """Micro-batches first..end-1 in order, built by `num_workers` processes ahead of use."""
    return torch.utils.data.DataLoader(
        batches,
        batch_size=None,
        sampler=range(first, end),
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=4 if num_workers > 0 else None,
        persistent_workers=False,
    )
