"""Building a STAMP model from a config: one builder for models trained from scratch, the tiny test model
and the real-size benchmark presets (loading saved weights is `stamp.model.loading`).

An `Architecture` names the sizes of a Qwen2-VL / Qwen2.5-VL backbone; `build_model` turns it, a
tokenizer and STAMP's settings into a randomly initialised `StampModel`:

    arch = Architecture(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=128,
                        mrope_section=[2, 3, 3], vision_depth=1, vision_embed_dim=32, vision_heads=2)
    model = build_model(tokenizer, arch, seed=0)                 # the tiny test model's network

Fields left None keep transformers' defaults, so a config built here equals the one transformers writes
for the same sizes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

from stamp.model.settings import StampSettings, check_choice
from stamp.model.tokens import IM_END, IMAGE_PAD, PAD, VIDEO_PAD, VISION_START, add_stamp_tokens, token_id

FAMILIES = ("qwen2_vl", "qwen2_5_vl")
PATCH = dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
"""Qwen2-VL's patching: 14x14 pixels, 2x2 patches merged into one cell (one LM token), 2 frames."""


@dataclass
class Architecture:
    """The sizes of a Qwen2-VL ("qwen2_vl") or Qwen2.5-VL ("qwen2_5_vl") backbone."""

    family: str = "qwen2_vl"
    """Backbone class: qwen2_vl or qwen2_5_vl."""
    hidden_size: int = 256
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 1024
    mrope_section: list[int] = field(default_factory=lambda: [8, 12, 12])
    """M-RoPE split of head_dim/2 into (t, h, w) frequencies; must sum to hidden_size/num_heads/2."""
    vision_depth: int = 4
    vision_embed_dim: int = 192
    vision_heads: int = 4
    vision_mlp_ratio: int = 2
    """Qwen2-VL's vision MLP width as a multiple of its width (Qwen2.5-VL: the default of
    `vision_intermediate_size`)."""
    vision_intermediate_size: int | None = None
    """Qwen2.5-VL's vision MLP width (None: vision_embed_dim * vision_mlp_ratio)."""
    vision_fullatt_blocks: list[int] | None = None
    """Qwen2.5-VL's vision blocks with full attention, the others windowed (None: the last block)."""
    vision_hidden_act: str | None = None
    """Qwen2.5-VL's vision MLP activation (None: transformers' default)."""
    vocab_size: int | None = None
    """Embedding rows (None: the tokenizer's size). A published vocabulary may be larger than its
    tokenizer: STAMP's two tokens then take rows that exist."""
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 8192
    rope_theta: float | None = None
    rms_norm_eps: float | None = None

    def __post_init__(self) -> None:
        check_choice("family", self.family, FAMILIES)
        if sum(self.mrope_section) * 2 * self.num_heads != self.hidden_size:
            raise ValueError(
                f"mrope_section {self.mrope_section} must sum to hidden_size/num_heads/2 = "
                f"{self.hidden_size // self.num_heads // 2}"
            )


def qwen_vl_config(tokenizer, arch: Architecture):
    """The transformers config of `arch` around `tokenizer` (its special-token ids), without STAMP's
    settings."""
    text = dict(
        hidden_size=arch.hidden_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_kv_heads,
        intermediate_size=arch.intermediate_size,
        rope_scaling={"type": "mrope", "mrope_section": list(arch.mrope_section)},
        max_position_embeddings=arch.max_position_embeddings,
        vocab_size=arch.vocab_size or len(tokenizer),
        bos_token_id=token_id(tokenizer, PAD),
        eos_token_id=token_id(tokenizer, IM_END),
        pad_token_id=token_id(tokenizer, PAD),
    )
    optional = {"rope_theta": arch.rope_theta, "rms_norm_eps": arch.rms_norm_eps}
    text.update({k: v for k, v in optional.items() if v is not None})
    if arch.tie_word_embeddings:
        text["tie_word_embeddings"] = True
    if len(tokenizer) > text["vocab_size"]:
        raise ValueError(f"the tokenizer has {len(tokenizer)} tokens, more than vocab_size {arch.vocab_size}")
    common = dict(
        text_config=text,
        image_token_id=token_id(tokenizer, IMAGE_PAD),
        video_token_id=token_id(tokenizer, VIDEO_PAD),
        vision_start_token_id=token_id(tokenizer, VISION_START),
        tie_word_embeddings=arch.tie_word_embeddings,
    )
    if arch.family == "qwen2_vl":
        vision = dict(
            depth=arch.vision_depth,
            embed_dim=arch.vision_embed_dim,
            num_heads=arch.vision_heads,
            mlp_ratio=arch.vision_mlp_ratio,
            hidden_size=arch.hidden_size,
            **PATCH,
        )
        return Qwen2VLConfig(vision_config=vision, **common)
    vision = dict(
        depth=arch.vision_depth,
        hidden_size=arch.vision_embed_dim,
        intermediate_size=arch.vision_intermediate_size or int(arch.vision_embed_dim * arch.vision_mlp_ratio),
        num_heads=arch.vision_heads,
        window_size=112,
        fullatt_block_indexes=arch.vision_fullatt_blocks or [arch.vision_depth - 1],
        out_hidden_size=arch.hidden_size,
        **PATCH,
    )
    if arch.vision_hidden_act is not None:
        vision["hidden_act"] = arch.vision_hidden_act
    return Qwen2_5_VLConfig(vision_config=vision, **common)


def stamp_config(tokenizer, arch: Architecture, attn_implementation: str = "sdpa", **settings):
    """`qwen_vl_config` with STAMP's settings: its two tokens (added to `tokenizer` if missing) and any
    `StampSettings` field given in `settings` (position_mode, attention_mode, mask_embedding, ...)."""
    seg_id, mask_id = add_stamp_tokens(tokenizer)
    config = qwen_vl_config(tokenizer, arch)
    config.stamp = StampSettings(seg_id, mask_id, **settings).to_dict()
    config._attn_implementation = attn_implementation
    return config


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Create new tensors in `dtype` inside the block (parameters made directly in the target dtype)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build_from_config(config, *, seed: int = 0, dtype: torch.dtype | None = None, device="cpu"):
    """A randomly initialised StampModel of a transformers `config` with STAMP settings, created in
    `dtype` on `device` (no fp32 copy of a large model first), eval mode."""
    from stamp.model.modeling import MODEL_CLASSES

    torch.manual_seed(seed)
    with torch.device(device), default_dtype(dtype or torch.get_default_dtype()):
        model = MODEL_CLASSES[config.model_type](config)
    return model.eval()


def build_model(
    tokenizer,
    arch: Architecture,
    *,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    device="cpu",
    attn_implementation: str = "sdpa",
    **settings,
):
    """A randomly initialised STAMP model of `arch` around `tokenizer` (STAMP's tokens added if missing),
    seeded; `settings`: `StampSettings` fields (position_mode, attention_mode, mask_embedding, ...)."""
    config = stamp_config(tokenizer, arch, attn_implementation, **settings)
    return build_from_config(config, seed=seed, dtype=dtype, device=device)


def meta_model(config, dtype: torch.dtype = torch.float32):
    """The model `config` describes, in `dtype` on the meta device (shapes only, nothing allocated)."""
    from stamp.model.modeling import MODEL_CLASSES

    with torch.device("meta"), default_dtype(dtype):
        return MODEL_CLASSES[config.model_type](config)
