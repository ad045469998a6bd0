"""Two-phase inference: the answer autoregressively, each mask in one pass."""

from stamp.inference.generation import GenerationConfig, GenerationOutput, GenerationRequest, generate
from stamp.inference.predictor import StampMask, StampPredictor, StampResult, logits_to_mask

__all__ = [
    "GenerationConfig",
    "GenerationOutput",
    "GenerationRequest",
    "StampMask",
    "StampPredictor",
    "StampResult",
    "generate",
    "logits_to_mask",
]
