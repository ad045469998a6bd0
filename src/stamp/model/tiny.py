"""A tiny random STAMP model for tests: built in code in well under a second, no files needed."""

from __future__ import annotations

import torch
from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

from stamp.model.config import StampSettings
from stamp.model.tokens import (
    IM_END,
    IMAGE_PAD,
    PAD,
    VIDEO_PAD,
    VISION_START,
    add_stamp_tokens,
    build_byte_tokenizer,
    token_id,
)
from stamp.processing import CELL, ProcessorSettings, StampProcessor

TINY_TEXT = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    intermediate_size=128,
    rope_scaling={"type": "mrope", "mrope_section": [2, 3, 3]},  # sums to head_dim / 2 = 8
    max_position_embeddings=4096,
)
TINY_VISION = dict(
    depth=1,
    embed_dim=32,
    num_heads=2,
    mlp_ratio=2,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
)


def build_tiny_model(
    seed: int = 0,
    *,
    family: str = "qwen2_vl",
    attn_implementation: str = "sdpa",
    position_mode: str = "grid",
    attention_mode: str = "hybrid",
    mask_embedding: str = "visual",
    min_cells: int = 4,
    max_cells: int = 64,
):
    """A randomly initialised STAMP model (hidden 64, 2 layers, 1 vision block) with a byte tokenizer.

    Images are resized to between `min_cells` and `max_cells` merged 28x28 cells (e.g. 224x224 -> 8x8).
    The processor is attached as `model.processor`.
    """
    from stamp.model.modeling import MODEL_CLASSES

    tok = build_byte_tokenizer()
    seg_id, mask_id = add_stamp_tokens(tok)
    ids = {
        name: token_id(tok, t)
        for name, t in (("image", IMAGE_PAD), ("video", VIDEO_PAD), ("vstart", VISION_START))
    }
    text = dict(
        TINY_TEXT, vocab_size=len(tok), bos_token_id=token_id(tok, PAD), eos_token_id=token_id(tok, IM_END)
    )
    text["pad_token_id"] = token_id(tok, PAD)
    common = dict(
        text_config=text,
        image_token_id=ids["image"],
        video_token_id=ids["video"],
        vision_start_token_id=ids["vstart"],
        tie_word_embeddings=False,
    )
    if family == "qwen2_vl":
        config = Qwen2VLConfig(vision_config=dict(TINY_VISION, hidden_size=text["hidden_size"]), **common)
    elif family == "qwen2_5_vl":
        vision = dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            out_hidden_size=text["hidden_size"],
            patch_size=14,
            spatial_merge_size=2,
            temporal_patch_size=2,
            window_size=56,
            fullatt_block_indexes=[1],
        )
        config = Qwen2_5_VLConfig(vision_config=vision, **common)
    else:
        raise ValueError(f"family must be one of {sorted(MODEL_CLASSES)}, got {family!r}")
    config.stamp = StampSettings(seg_id, mask_id, position_mode, attention_mode, mask_embedding).to_dict()
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = MODEL_CLASSES[family](config).eval()
    model.processor = StampProcessor(
        tok,
        ProcessorSettings(
            min_pixels=min_cells * CELL * CELL, max_pixels=max_cells * CELL * CELL, system_prompt=None
        ),
    )
    return model
