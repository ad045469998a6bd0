"""The tiny random STAMP model of the tests and the offline schema: hidden 64, 2 layers, 1 vision block,
a byte-level tokenizer built in code (no files), and its processor."""

from __future__ import annotations

from stamp.model.build import Architecture, build_model
from stamp.model.tokens import build_byte_tokenizer
from stamp.processing import CELL, ProcessorSettings, StampProcessor

TINY = Architecture(
    hidden_size=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    intermediate_size=128,
    mrope_section=[2, 3, 3],
    vision_depth=1,
    vision_embed_dim=32,
    vision_heads=2,
    vision_mlp_ratio=2,
)


def tiny_processor(*, min_cells: int = 4, max_cells: int = 64) -> StampProcessor:
    """The tiny model's processor (every tiny model has the same): the byte-level tokenizer, no system
    prompt, images resized to between `min_cells` and `max_cells` merged 28x28 cells (224x224 -> 8x8)."""
    settings = ProcessorSettings(
        min_pixels=min_cells * CELL * CELL, max_pixels=max_cells * CELL * CELL, system_prompt=None
    )
    return StampProcessor(build_byte_tokenizer(), settings)


def build_tiny_model(
    seed: int = 0, *, min_cells: int = 4, max_cells: int = 64, family: str = "qwen2_vl", **settings
):
    """(a tiny random STAMP model for tests, its processor: `tiny_processor`). `family`: the backbone
    class; `settings`: `StampSettings` fields and `attn_implementation`."""
    from dataclasses import replace

    processor = tiny_processor(min_cells=min_cells, max_cells=max_cells)
    model = build_model(processor.tokenizer, replace(TINY, family=family), seed=seed, **settings)
    return model, processor
