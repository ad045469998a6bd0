"""What one training step computes: STAMP's own losses (`StampModel.stamp_forward`) plus the extra loss
terms a script passes to the trainer (`ExtraLoss`), over a collated batch, and the rewrite of each
example a script may ask for."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn


class ExtraLoss(nn.Module):
    """A loss term trained with STAMP's own (text, BCE, Dice), and the parameters it trains, passed to
    `Trainer(extra_losses={NAME: (factory, weight)})`. Subclasses implement `loss`; the other hooks
    default to nothing. What the trainer does with each:
    - batch fields: `batch_fields(samples, examples)` runs with every batch (in the data workers, if
      any); each tensor it returns travels with the batch to the device (as `NAME.FIELD`) and reaches
      `loss` as the keyword FIELD;
    - parameters: trained by the same optimizer, after the model's; each checkpoint saves them in
      `AUXILIARY_FILE` (keys `NAME.PARAMETER`) and a resumed run restores them; the exported model never
      holds them;
    - the forward: `observe(model)` is entered around the model's training forward (to hook its
      activations; what it yields is passed on), then `loss(out, observed, **fields)` gives the term,
      added to the model's loss times its weight, and the statistics to log (0-d tensors)."""

    def batch_fields(self, samples: list, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Extra tensors for one batch, built on the CPU with it.

        Args:
            samples: the batch's `StampSample`s, in batch order.
            examples: their encodings (`StampProcessor.encode_sample`, before any `example_transform`),
                in the same order; an example with an image holds it as `example["image"]` (`grid_hw`:
                its (gh, gw) merged cells).

        Returns:
            field name -> tensor (any shape); each reaches `loss` as a keyword argument.
        """
        return {}

    def observe(self, model: nn.Module) -> contextlib.AbstractContextManager[Any]:
        """A context entered around the model's training forward (e.g. forward hooks that keep
        activations); what it yields is `loss`'s `observed`."""
        return contextlib.nullcontext()

    def loss(
        self, out, observed: Any, **fields: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The unweighted term (0-d) and the statistics to log (name -> 0-d tensor).

        Args:
            out: the model's `StampOutput` of this forward.
            observed: what `observe` yielded.
            fields: this batch's `batch_fields`, on the device.

        Every parameter should take part in the term (a zero term included) so that data-parallel
        training finds a gradient for each."""
        raise NotImplementedError


ExtraLossFactory = Callable[[nn.Module], ExtraLoss]
"""Builds an extra loss term for the model about to be trained (a StampModel, possibly inside peft)."""


class ExtraFields:
    """The batch fields of several extra loss terms, as one callable for the data stream (picklable into
    data workers as long as the terms are)."""

    def __init__(self, terms: dict[str, ExtraLoss]):
        self.terms = terms

    def __call__(self, samples: list, examples: list[dict]) -> dict[str, torch.Tensor]:
        fields = {}
        for name, term in self.terms.items():
            for field, value in term.batch_fields(samples, examples).items():
                fields[f"{name}.{field}"] = value
        return fields


def take_fields(batch: dict, names: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """Remove the extra loss terms' fields from `batch`: term name -> {field: tensor}."""
    taken: dict[str, dict[str, torch.Tensor]] = {name: {} for name in names}
    for key in [k for k in batch if "." in k]:
        name, field = key.split(".", 1)
        if name in taken:
            taken[name][field] = batch.pop(key)
    return taken


class BoundTransform:
    """An `example_transform` with the model's `StampSettings` bound (picklable into data workers as
    long as the transform is)."""

    def __init__(self, transform: Callable[[dict, Any], dict], settings):
        self.transform, self.settings = transform, settings

    def __call__(self, example: dict) -> dict:
        return self.transform(example, self.settings)


class StampTrainingModule(nn.Module):
    """Wraps a StampModel so DDP/FSDP see the STAMP training step as `forward`, together with the extra
    loss terms of the run (`ExtraLoss`) and their weights.

    `forward(**batch)` takes a collated batch (the terms' fields under `NAME.FIELD` keys) and returns
    (total loss, the model's StampOutput, the terms' statistics)."""

    def __init__(
        self,
        model,
        loss_weights: dict[str, float],
        extra_losses: dict[str, ExtraLoss] | None = None,
        extra_weights: dict[str, float] | None = None,
    ):
        super().__init__()
        self.model = model
        self.loss_weights = loss_weights
        self.auxiliary = nn.ModuleDict(extra_losses or {})
        self.auxiliary_weights = {name: (extra_weights or {})[name] for name in self.auxiliary}

    def forward(self, **batch):
        fields = take_fields(batch, list(self.auxiliary))
        with contextlib.ExitStack() as stack:
            observed = {
                name: stack.enter_context(o.observe(self.model)) for name, o in self.auxiliary.items()
            }
            out = self.model.stamp_forward(**batch, **self.loss_weights)
        loss, stats = out.loss, {}
        for name, extra_loss in self.auxiliary.items():
            term, extra = extra_loss.loss(out, observed[name], **fields[name])
            loss = loss + self.auxiliary_weights[name] * term
            stats.update(extra)
        return loss, out, stats


def build_extra_losses(
    extra_losses: dict[str, tuple[ExtraLossFactory, float]], model: nn.Module
) -> dict[str, ExtraLoss]:
    """The terms of `extra_losses` with a weight above 0, in its order, built for `model` and placed on
    its device."""
    built = {}
    for name, (factory, weight) in extra_losses.items():
        if weight > 0:
            term = factory(model)
            if not isinstance(term, ExtraLoss):
                raise TypeError(f"the factory of extra loss {name!r} returned {type(term).__name__}")
            built[name] = term.to(model.device)
    return built
