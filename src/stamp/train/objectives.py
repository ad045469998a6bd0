"""Auxiliary training objectives: extra loss terms, registered by name, that a config turns on.

STAMP's own losses (text, BCE, Dice) are the model's. An experiment that needs another term trained
with them (a probe head, a regulariser) defines an `AuxiliaryObjective`, registers a factory for it
under a name, and its config gives the name a weight (0: off):

    loss:
      auxiliary: {NAME: 0.3}

An objective named NAME lives in `experiments/NAME.py`, which registers it when imported and trains
with it through the same entry point as `stamp train`: `python experiments/NAME.py train CONFIG
[key=value ...]`. The package registers no objective, so `stamp train` refuses a config that names
one, with that command.

What the trainer does for each objective turned on:
- batch fields: `batch_fields(samples, examples)` runs with every batch (in the data workers, if
  any); each tensor it returns travels with the batch to the device (as `NAME.FIELD`) and is passed
  to `loss` as the keyword FIELD;
- parameters: the objective's own (an `nn.Module`'s) are trained by the same optimizer, after the
  model's; each checkpoint saves them in `AUXILIARY_FILE` (keys `NAME.PARAMETER`) and `--resume`
  restores them; the exported model never holds them;
- the forward: `observe(model)` is entered around the model's training forward (to hook its
  activations; what it yields is passed on), then `loss(out, observed, **fields)` returns the term,
  which is added to the model's loss times its weight, and the statistics to log (0-d tensors).

Example (fits one number to the batch size; a real one: `experiments/shape_aux.py`, a head on the
vision tower's cell features that it reads through `observe`):

    class Scale(AuxiliaryObjective):
        def __init__(self, model):
            super().__init__()
            self.scale = nn.Parameter(torch.zeros(()))

        def batch_fields(self, samples, examples):
            return {"n": torch.tensor(float(len(samples)))}     # reaches `loss` as n=...

        def loss(self, out, observed, n):
            term = (self.scale - n).pow(2)
            return term, {"scale_loss": term}

    register_objective("scale", Scale)                          # loss.auxiliary: {scale: 0.1}
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from stamp.yaml_config import ConfigError

AUXILIARY_FILE = "auxiliary.safetensors"
"""A checkpoint's file of auxiliary objectives' parameters (kept out of its exported model)."""


class AuxiliaryObjective(nn.Module):
    """One auxiliary loss term and the parameters it trains. Subclasses implement `loss`; the other
    hooks default to nothing."""

    def batch_fields(self, samples: list, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Extra tensors for one batch, built on the CPU with it.

        Args:
            samples: the batch's `StampSample`s, in batch order.
            examples: their encodings (`StampProcessor.encode_sample`), in the same order; an example
                with an image holds it as `example["image"]` (`grid_hw`: its (gh, gw) merged cells).

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

        Every parameter of the objective should take part in the term (a zero term included) so that
        data-parallel training finds a gradient for each."""
        raise NotImplementedError


ObjectiveFactory = Callable[[nn.Module], AuxiliaryObjective]
"""Builds an objective for the model about to be trained (a StampModel, possibly inside peft)."""

_REGISTRY: dict[str, ObjectiveFactory] = {}


def register_objective(name: str, factory: ObjectiveFactory) -> None:
    """Make `loss.auxiliary.NAME` build objectives with `factory` (registering a name again replaces
    its factory)."""
    if not name.isidentifier():
        raise ValueError(f"an objective's name must be a Python identifier, got {name!r}")
    _REGISTRY[name] = factory


def registered_objectives() -> list[str]:
    return sorted(_REGISTRY)


def check_registered(weights: dict[str, float]) -> None:
    """Raise ConfigError (one line, with the command that registers it) for the first objective that
    `weights` turns on and no imported module registered."""
    for name, weight in weights.items():
        if weight > 0 and name not in _REGISTRY:
            raise ConfigError(
                f"loss.auxiliary names the objective '{name}', which is not registered: it is defined "
                f"in experiments/{name}.py, which registers it; train with `python experiments/{name}.py "
                "train CONFIG [key=value ...]`"
            )


def build_objectives(weights: dict[str, float], model: nn.Module) -> dict[str, AuxiliaryObjective]:
    """The objectives `weights` turns on (weight > 0), in its order, built for `model` and placed on
    its device."""
    check_registered(weights)
    built = {}
    for name, weight in weights.items():
        if weight > 0:
            objective = _REGISTRY[name](model)
            if not isinstance(objective, AuxiliaryObjective):
                raise TypeError(f"the factory of objective '{name}' returned {type(objective).__name__}")
            built[name] = objective.to(model.device)
    return built


def field_key(name: str, field: str) -> str:
    """The batch key of objective `name`'s field `field`."""
    return f"{name}.{field}"


class AuxiliaryFields:
    """The batch fields of several objectives, as one callable for the data stream (picklable into
    data workers as long as the objectives are)."""

    def __init__(self, objectives: dict[str, AuxiliaryObjective]):
        self.objectives = objectives

    def __call__(self, samples: list, examples: list[dict]) -> dict[str, torch.Tensor]:
        fields = {}
        for name, objective in self.objectives.items():
            for field, value in objective.batch_fields(samples, examples).items():
                fields[field_key(name, field)] = value
        return fields


def take_fields(batch: dict, names: list[str]) -> dict[str, dict[str, torch.Tensor]]:
    """Remove the objectives' fields from `batch`: objective name -> {field: tensor}."""
    taken: dict[str, dict[str, torch.Tensor]] = {name: {} for name in names}
    for key in [k for k in batch if "." in k]:
        name, field = key.split(".", 1)
        if name in taken:
            taken[name][field] = batch.pop(key)
    return taken
