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

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch

from stamp.processing import CELL, ProcessorSettings


@dataclass(frozen=True)
class Preset:
    """The dimensions of one published model (its `config.json`)."""

    name: str
    family: str  # "qwen2_vl" | "qwen2_5_vl"
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    vocab: int
    tie_word_embeddings: bool
    max_positions: int
    vision: dict = field(default_factory=dict)
    mrope_section: tuple[int, int, int] = (16, 24, 24)
    rope_theta: float = 1_000_000.0


_QWEN2_VL_VISION = {"depth": 32, "embed_dim": 1280, "num_heads": 16, "mlp_ratio": 4}
_QWEN2_5_VL_VISION = {
    "depth": 32,
    "hidden_size": 1280,
    "intermediate_size": 3420,
    "num_heads": 16,
    "window_size": 112,
    "fullatt_block_indexes": [7, 15, 23, 31],
    "hidden_act": "silu",
}

PRESETS = {
    p.name: p
    for p in (
        Preset("qwen2-vl-2b", "qwen2_vl", 1536, 28, 12, 2, 8960, 151_936, True, 32768, _QWEN2_VL_VISION),
        Preset("qwen2-vl-7b", "qwen2_vl", 3584, 28, 28, 4, 18944, 152_064, False, 32768, _QWEN2_VL_VISION),
        Preset(
            "qwen2.5-vl-3b", "qwen2_5_vl", 2048, 36, 16, 2, 11008, 151_936, True, 128000, _QWEN2_5_VL_VISION
        ),
        Preset(
            "qwen2.5-vl-7b", "qwen2_5_vl", 3584, 28, 28, 4, 18944, 152_064, False, 128000, _QWEN2_5_VL_VISION
        ),
    )
}
"""Qwen/Qwen2-VL-2B-Instruct, Qwen/Qwen2-VL-7B-Instruct, Qwen/Qwen2.5-VL-3B-Instruct, Qwen/Qwen2.5-VL-7B-Instruct."""

PROCESSOR_SETTINGS = ProcessorSettings(min_pixels=4 * CELL * CELL, max_pixels=1280 * CELL * CELL)
"""Images keep their size between 4 and 1,280 merged cells (448x448 -> 256 cells, 896x896 -> 1,024), so
a request's cost follows the image size the benchmark gives it."""

WORKING_SET_BYTES = 3 * 2**30
"""Memory a request needs besides the weights at the bench's sizes (activations, KV cache, attention
scores of a 1,280-cell image in the vision tower), added to the parameter bytes before building."""


class PresetMemoryError(MemoryError):
    """The machine lacks the memory for a preset (one line: what is needed, what is free)."""


def build_config(preset: Preset):
    """The transformers config of `preset` with STAMP's settings, around the stand-in tokenizer.
    Returns (config, tokenizer)."""
    from stamp.model.settings import StampSettings
    from stamp.model.tokens import add_stamp_tokens, build_byte_tokenizer
    from stamp.tiny import qwen_vl_config

    tokenizer = build_byte_tokenizer()
    seg_id, mask_id = add_stamp_tokens(tokenizer)
    if len(tokenizer) > preset.vocab:
        raise ValueError(f"the stand-in tokenizer has more tokens than {preset.name}'s vocabulary")
    text = dict(
        hidden_size=preset.hidden,
        num_hidden_layers=preset.layers,
        num_attention_heads=preset.heads,
        num_key_value_heads=preset.kv_heads,
        intermediate_size=preset.intermediate,
        rope_scaling={"type": "mrope", "mrope_section": list(preset.mrope_section)},
        rope_theta=preset.rope_theta,
        rms_norm_eps=1e-6,
        max_position_embeddings=preset.max_positions,
        vocab_size=preset.vocab,
        tie_word_embeddings=preset.tie_word_embeddings,
    )
    config = qwen_vl_config(
        tokenizer, preset.family, text, dict(preset.vision), tie_word_embeddings=preset.tie_word_embeddings
    )
    config.stamp = StampSettings(seg_id, mask_id).to_dict()
    config._attn_implementation = "sdpa"
    return config, tokenizer


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype) -> Iterator[None]:
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def meta_model(config, dtype: torch.dtype = torch.float32):
    """The model `config` describes, in `dtype` on the meta device (shapes only, nothing allocated)."""
    from stamp.model.modeling import MODEL_CLASSES

    with torch.device("meta"), _default_dtype(dtype):
        return MODEL_CLASSES[config.model_type](config)


def parameter_count(config) -> int:
    """Parameters of the model `config` describes, counted on the meta device (nothing allocated)."""
    return sum(p.numel() for p in meta_model(config).parameters())


def available_bytes(device: torch.device) -> int | None:
    """Free memory of `device`: CUDA's free memory, or the CPU's MemAvailable (None if unknown)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


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
    """A random STAMP model of preset `name` in `dtype` on `device`, eval mode, `.processor` attached.
    Returns (model, memory estimate dict)."""
    from stamp.model.modeling import MODEL_CLASSES
    from stamp.processing import StampProcessor

    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    device = torch.device(device)
    config, tokenizer = build_config(PRESETS[name])
    estimate = check_memory(name, parameter_count(config), dtype, device)
    torch.manual_seed(seed)
    with torch.device(device), _default_dtype(dtype):
        model = MODEL_CLASSES[config.model_type](config)
    model.eval().requires_grad_(False)
    model.processor = StampProcessor(tokenizer, PROCESSOR_SETTINGS)
    return model, estimate
