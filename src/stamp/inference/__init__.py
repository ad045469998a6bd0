"""Two-phase inference: the answer autoregressively, each mask in one pass. The names are imported
lazily (as in `stamp`), so that `stamp.inference.options` -- what the command line's parser reads -- does
not import torch and transformers."""

from importlib import import_module

_EXPORTS = {
    "EventCallback": "stamp.inference.generation",
    "GenerationConfig": "stamp.inference.options",
    "GenerationOutput": "stamp.inference.generation",
    "GenerationRequest": "stamp.inference.generation",
    "generate": "stamp.inference.generation",
    "ChatRequest": "stamp.inference.predictor",
    "PredictorOptions": "stamp.inference.options",
    "StampMask": "stamp.inference.predictor",
    "StampPredictor": "stamp.inference.predictor",
    "StampResult": "stamp.inference.predictor",
    "logits_to_mask": "stamp.inference.predictor",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'stamp.inference' has no attribute {name!r}")
