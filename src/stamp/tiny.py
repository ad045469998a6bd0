"""Building STAMP models from scratch: the tiny random test model and from-scratch training runs."""

from __future__ import annotations

import torch
from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

from stamp.model.settings import PLACEHOLDERS, StampSettings
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


def qwen_vl_config(tokenizer, family: str, text: dict, vision: dict, *, tie_word_embeddings: bool = False):
    """A Qwen2-VL (`family` "qwen2_vl") or Qwen2.5-VL ("qwen2_5_vl") config around `tokenizer`.

    `text`: the language model's sizes (hidden_size, layers, heads, mrope sections, vocab_size ...);
    `vision`: the vision tower's own sizes. Added here: the special-token ids from `tokenizer`, the patch
    sizes (14, merge 2, temporal 2) and the link from the patch merger to the LM width.
    """
    text = {
        **text,
        "bos_token_id": token_id(tokenizer, PAD),
        "eos_token_id": token_id(tokenizer, IM_END),
        "pad_token_id": token_id(tokenizer, PAD),
    }
    common = dict(
        text_config=text,
        image_token_id=token_id(tokenizer, IMAGE_PAD),
        video_token_id=token_id(tokenizer, VIDEO_PAD),
        vision_start_token_id=token_id(tokenizer, VISION_START),
        tie_word_embeddings=tie_word_embeddings,
    )
    patch = dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    if family == "qwen2_vl":
        return Qwen2VLConfig(vision_config={**vision, "hidden_size": text["hidden_size"], **patch}, **common)
    if family == "qwen2_5_vl":
        vision = {**vision, "out_hidden_size": text["hidden_size"], **patch}
        return Qwen2_5_VLConfig(vision_config=vision, **common)
    raise ValueError(f"family must be one of qwen2_vl, qwen2_5_vl, got {family!r}")


def build_model_from_scratch(
    tokenizer,
    *,
    seed: int = 0,
    family: str = "qwen2_vl",
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    intermediate_size: int = 128,
    mrope_section: tuple[int, int, int] = (2, 3, 3),
    vision_depth: int = 1,
    vision_embed_dim: int = 32,
    vision_heads: int = 2,
    vision_mlp_ratio: int = 2,
    attn_implementation: str = "sdpa",
    position_mode: str = "grid",
    attention_mode: str = "hybrid",
    mask_embedding: str = "visual",
    mask_decoder: str = PLACEHOLDERS,
    label_token_ids: list[int] | None = None,
    processor_settings: ProcessorSettings | None = None,
):
    """A randomly initialised STAMP model of the given sizes around `tokenizer`; `.processor` attached.
    `mask_decoder` / `label_token_ids`: its `StampSettings` of those names."""
    from stamp.model.modeling import MODEL_CLASSES

    seg_id, mask_id = add_stamp_tokens(tokenizer)
    text = dict(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_kv_heads,
        intermediate_size=intermediate_size,
        rope_scaling={"type": "mrope", "mrope_section": list(mrope_section)},
        max_position_embeddings=8192,
        vocab_size=len(tokenizer),
    )
    if family == "qwen2_5_vl":
        vision = dict(
            depth=vision_depth,
            hidden_size=vision_embed_dim,
            intermediate_size=int(vision_embed_dim * vision_mlp_ratio),
            num_heads=vision_heads,
            window_size=112,
            fullatt_block_indexes=[vision_depth - 1],
        )
    else:
        vision = dict(
            depth=vision_depth, embed_dim=vision_embed_dim, num_heads=vision_heads, mlp_ratio=vision_mlp_ratio
        )
    config = qwen_vl_config(tokenizer, family, text, vision)
    config.stamp = StampSettings(
        seg_id,
        mask_id,
        position_mode=position_mode,
        attention_mode=attention_mode,
        mask_embedding=mask_embedding,
        mask_decoder=mask_decoder,
        label_token_ids=label_token_ids,
    ).to_dict()
    config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = MODEL_CLASSES[family](config).eval()
    model.processor = StampProcessor(tokenizer, processor_settings or ProcessorSettings())
    return model


def build_tiny_model(seed: int = 0, *, min_cells: int = 4, max_cells: int = 64, **kwargs):
    """A tiny random STAMP model (hidden 64, 2 layers, 1 vision block) with a byte-level tokenizer, for
    tests. Images are resized to between `min_cells` and `max_cells` merged 28x28 cells (224x224 -> 8x8)."""
    settings = ProcessorSettings(
        min_pixels=min_cells * CELL * CELL, max_pixels=max_cells * CELL * CELL, system_prompt=None
    )
    return build_model_from_scratch(build_byte_tokenizer(), seed=seed, processor_settings=settings, **kwargs)
