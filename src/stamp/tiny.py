"""The tiny random STAMP model of the tests and the offline schema: hidden 64, 2 layers, 1 vision block,
a byte-level tokenizer built in code (no files), its processor attached."""

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


def build_tiny_model(
    seed: int = 0, *, min_cells: int = 4, max_cells: int = 64, family: str = "qwen2_vl", **settings
):
    """A tiny random STAMP model for tests, `.processor` attached. Images are resized to between
    `min_cells` and `max_cells` merged 28x28 cells (224x224 -> 8x8). `family`: the backbone class;
    `settings`: `StampSettings` fields and `attn_implementation`."""
    from dataclasses import replace

    tokenizer = build_byte_tokenizer()
    model = build_model(tokenizer, replace(TINY, family=family), seed=seed, **settings)
    processor = ProcessorSettings(
        min_pixels=min_cells * CELL * CELL, max_pixels=max_cells * CELL * CELL, system_prompt=None
    )
    model.processor = StampProcessor(tokenizer, processor)
    return model
