"""STAMP's own settings, stored in the backbone's `config.json` under the key "stamp"."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from stamp.model.attention import ATTENTION_MODES
from stamp.model.positions import POSITION_MODES

MASK_EMBEDDING_MODES = ("visual", "plain")
CHECKPOINT_REFINES = ("none", "guided")
"""The refinements a checkpoint may name as its default (`StampSettings.refine`)."""
DTYPES = ("float32", "bfloat16", "float16")


@dataclass
class StampSettings:
    """What makes a Qwen2-VL a STAMP model. Saved with the weights, so a checkpoint is self-describing."""

    seg_token_id: int
    """Id of `<|seg|>`, the vocabulary token whose emission triggers a mask."""
    mask_token_id: int
    """Id of `<|mask|>`, the placeholder token (one per merged image cell)."""
    position_mode: str = "grid"
    """Placeholder positions: "grid" (M-RoPE ids marking each cell, default) or "text" (1-D; the
    authors' checkpoints)."""
    attention_mode: str = "hybrid"
    """"hybrid": placeholders attend bidirectionally among themselves (the paper); "causal": ablation."""
    mask_embedding: str = "visual"
    """"visual": E_mask = embed(<|mask|>) + merged visual feature of the cell (the paper); "plain":
    embed(<|mask|>) only (ablation)."""
    mask_threshold: float = 0.5
    """Foreground probability above which a cell (and an upsampled pixel) belongs to the mask, unless the
    caller gives another. Trained on area-fraction targets, a cell's probability estimates its foreground
    share, and the IoU-maximising cut for such probabilities lies below 0.5; so a model may carry a
    threshold calibrated on held-out data (never on the reported split)."""
    refine: str = "none"
    """The refinement of the upsampled mask unless the caller picks another (`refine="auto"`, the default
    of the CLI, the Python API and the server): "none" or "guided" (image-guided edges, for models whose
    cell-level masks gain from them). A SAM refiner needs weights of its own, so it is always the
    caller's choice."""
    default_dtype: str | None = None
    """The dtype the weights are loaded in when the caller names none: "float32", "bfloat16" or
    "float16"; None loads them as saved. A small model may be saved in bf16 to halve its size and still
    run in fp32."""

    def __post_init__(self) -> None:
        check_choice("position_mode", self.position_mode, POSITION_MODES)
        check_choice("attention_mode", self.attention_mode, ATTENTION_MODES)
        check_choice("mask_embedding", self.mask_embedding, MASK_EMBEDDING_MODES)
        self.mask_threshold = check_probability("mask_threshold", self.mask_threshold)
        check_choice("refine", self.refine, CHECKPOINT_REFINES)
        if self.default_dtype is not None:
            check_choice("default_dtype", self.default_dtype, DTYPES)
        for name in ("seg_token_id", "mask_token_id"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"{name} must be a non-negative int, got {getattr(self, name)!r}")
        if self.seg_token_id == self.mask_token_id:
            raise ValueError("seg_token_id and mask_token_id must differ")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StampSettings:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown STAMP setting(s) {unknown}; known: {sorted(known)}")
        return cls(**data)


def check_probability(name: str, value) -> float:
    """`value` as a float if it is a number strictly between 0 and 1; else ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
        raise ValueError(f"{name} must be a number in (0, 1), got {value!r}")
    return float(value)


def check_choice(name: str, value, choices) -> None:
    """Raise ValueError naming the valid values when `value` is not one of `choices`."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
