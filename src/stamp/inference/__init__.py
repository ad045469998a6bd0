"""Two-phase inference: the answer autoregressively, each mask in one pass."""

from stamp.inference.generation import (
    EventCallback,
    GenerationConfig,
    GenerationOutput,
    GenerationRequest,
    generate,
)
from stamp.inference.predictor import (
    ChatRequest,
    PredictorOptions,
    StampMask,
    StampPredictor,
    StampResult,
    logits_to_mask,
)

__all__ = [
    "ChatRequest",
    "EventCallback",
    "GenerationConfig",
    "GenerationOutput",
    "GenerationRequest",
    "PredictorOptions",
    "StampMask",
    "StampPredictor",
    "StampResult",
    "generate",
    "logits_to_mask",
]
