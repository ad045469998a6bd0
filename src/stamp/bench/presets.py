"""Random STAMP models with the published dimensions of Qwen2-VL / Qwen2.5-VL, for `stamp bench --preset`.

    stamp bench --preset qwen2-vl-2b --device cpu --dtypes bf16 --n 256,1024

The text and vision sizes, heads, MLP widths, M-RoPE sections, tied or untied LM head and vocabulary size
are those of the published `config.json` of each model. The vocabulary keeps its published size: the
real tokenizers have fewer tokens than embedding rows (Qwen2-VL: 151,657 of 151,936), so STAMP's two
tokens take rows that already exist, as `StampModel.from_pretrained` does on a stock directory. The LM
head is a real cost of every decoded token, so its size matters; the tokenizer does not (the stand-in is
the byte-level tokenizer of the test model, `stamp.model.tokens.build_byte_tokenizer`, no download).

The weights are random and are created directly in the target dtype on the target device (no fp32 copy of
a 7B model first). Before anything is allocated, the parameter bytes plus a working set are compared with
the memory the device has free, and a one-line `PresetMemoryError` says what is missing.
For a fixed N and history, random weights cost exactly what trained weights cost.
"""

from __future__ import annotations

import torch

from stamp.model.build import Architecture, build_from_config, meta_model, stamp_config
from stamp.model.loading import available_bytes
from stamp.processing import CELL, ProcessorSettings


def _qwen2_vl(**sizes) -> Architecture:
    vision = dict(vision_depth=32, vision_embed_dim=1280, vision_heads=16, vision_mlp_ratio=4)
    return Architecture(family="qwen2_vl", max_position_embeddings=32768, **_COMMON, **vision, **sizes)


def _qwen2_5_vl(**sizes) -> Architecture:
    vision = dict(
        vision_depth=32,
        vision_embed_dim=1280,
        vision_intermediate_size=3420,
        vision_heads=16,
        vision_fullatt_blocks=[7, 15, 23, 31],
        vision_hidden_act="silu",
    )
    return Architecture(family="qwen2_5_vl", max_position_embeddings=128000, **_COMMON, **vision, **sizes)


_COMMON = dict(mrope_section=[16, 24, 24], rope_theta=1_000_000.0, rms_norm_eps=1e-6)

PRESETS = {
    "qwen2-vl-2b": _qwen2_vl(
        hidden_size=1536, num_layers=28, num_heads=12, num_kv_heads=2, intermediate_size=8960,
        vocab_size=151_936, tie_word_embeddings=True,
    ),
    "qwen2-vl-7b": _qwen2_vl(
        hidden_size=3584, num_layers=28, num_heads=28, num_kv_heads=4, intermediate_size=18944,
        vocab_size=152_064,
    ),
    "qwen2.5-vl-3b": _qwen2_5_vl(
        hidden_size=2048, num_layers=36, num_heads=16, num_kv_heads=2, intermediate_size=11008,
        vocab_size=151_936, tie_word_embeddings=True,
    ),
    "qwen2.5-vl-7b": _qwen2_5_vl(
        hidden_size=3584, num_layers=28, num_heads=28, num_kv_heads=4, intermediate_size=18944,
        vocab_size=152_064,
    ),
}  # fmt: skip
"""Qwen/Qwen2-VL-2B-Instruct, Qwen/Qwen2-VL-7B-Instruct, Qwen/Qwen2.5-VL-3B-Instruct, Qwen/Qwen2.5-VL-7B-Instruct."""

PROCESSOR_SETTINGS = ProcessorSettings(min_pixels=4 * CELL * CELL, max_pixels=1280 * CELL * CELL)
"""Images keep their size between 4 and 1,280 merged cells (448x448 -> 256 cells, 896x896 -> 1,024), so
a request's cost follows the image size the benchmark gives it."""

WORKING_SET_BYTES = 3 * 2**30
"""Memory a request needs besides the weights at the bench's sizes (activations, KV cache, attention
scores of a 1,280-cell image in the vision tower), added to the parameter bytes before building."""


class PresetMemoryError(MemoryError):
    """The machine lacks the memory for a preset (one line: what is needed, what is free)."""


def build_config(name: str):
    """The transformers config of preset `name` with STAMP's settings, around the stand-in tokenizer.
    Returns (config, tokenizer)."""
    from stamp.model.tokens import build_byte_tokenizer

    tokenizer = build_byte_tokenizer()
    return stamp_config(tokenizer, PRESETS[name]), tokenizer


def parameter_count(config) -> int:
    """Parameters of the model `config` describes, counted on the meta device (nothing allocated)."""
    return sum(p.numel() for p in meta_model(config).parameters())


def check_memory(name: str, params: int, dtype: torch.dtype, device: torch.device) -> dict:
    """Raise `PresetMemoryError` when parameters + working set exceed the device's free memory; else
    return the estimate (bytes) for the JSON."""
    weights = params * torch.empty((), dtype=dtype).element_size()
    need = weights + WORKING_SET_BYTES
    free = available_bytes(device)
    if free is not None and need > free:
        raise PresetMemoryError(
            f"--preset {name} in {str(dtype).removeprefix('torch.')} needs about {need / 2**30:.1f} GiB on "
            f"{device} ({weights / 2**30:.1f} GiB of weights + {WORKING_SET_BYTES / 2**30:.0f} GiB working "
            f"set) but {free / 2**30:.1f} GiB are free"
        )
    return {"weights_bytes": weights, "working_set_bytes": WORKING_SET_BYTES, "free_bytes": free}


def build_preset_model(
    name: str, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu", seed: int = 0
):
    """A random STAMP model of preset `name` in `dtype` on `device`, eval mode, and its processor.
    Returns (model, memory estimate dict)."""
    from stamp.processing import StampProcessor

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    device = torch.device(device)
    config, tokenizer = build_config(name)
    estimate = check_memory(name, parameter_count(config), dtype, device)
    model = build_from_config(config, seed=seed, dtype=dtype, device=device).requires_grad_(False)
    return model, StampProcessor(tokenizer, PROCESSOR_SETTINGS), estimate
