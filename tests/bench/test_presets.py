"""Real-size presets: the published dimensions, built in the target dtype, and a memory check first.
Nothing of real size is allocated here (dimensions on the meta device, a shrunk preset built)."""

import dataclasses

import pytest
import torch

from stamp.bench import presets
from stamp.bench.presets import PRESETS, PresetMemoryError, build_config, build_preset_model
from stamp.model.build import Architecture


@pytest.mark.parametrize(
    ("name", "billions", "tied", "vocab"),
    [
        ("qwen2-vl-2b", 2.21, True, 151_936),
        ("qwen2-vl-7b", 8.29, False, 152_064),
        ("qwen2.5-vl-3b", 3.75, True, 151_936),
        ("qwen2.5-vl-7b", 8.29, False, 152_064),
    ],
)
def test_published_sizes(name, billions, tied, vocab):
    config, tokenizer = build_config(name)
    text = config.get_text_config()
    assert text.vocab_size == vocab and config.tie_word_embeddings is tied
    assert text.rope_scaling["mrope_section"] == [16, 24, 24]
    assert config.stamp["seg_token_id"] < len(tokenizer) <= vocab
    assert presets.parameter_count(config) / 1e9 == pytest.approx(billions, abs=0.01)


def test_qwen2_5_vision_layout():
    config, _ = build_config("qwen2.5-vl-3b")
    vision = config.vision_config
    assert vision.fullatt_block_indexes == [7, 15, 23, 31] and vision.window_size == 112
    assert (vision.depth, vision.hidden_size, vision.intermediate_size, vision.out_hidden_size) == (
        32,
        1280,
        3420,
        2048,
    )


def test_built_in_the_target_dtype_without_an_fp32_copy(monkeypatch):
    small = dataclasses.replace(
        PRESETS["qwen2-vl-2b"],
        hidden_size=64,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=128,
        vocab_size=1000,
        vision_depth=1,
        vision_embed_dim=32,
        vision_heads=2,
        vision_mlp_ratio=2,
        mrope_section=[2, 3, 3],
    )
    monkeypatch.setitem(PRESETS, "small", small)
    made = []
    original = torch.nn.Linear.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        if self.weight.device.type != "meta":  # the parameter count builds on meta first
            made.append(self.weight.dtype)

    monkeypatch.setattr(torch.nn.Linear, "__init__", spy)
    model, _, estimate = build_preset_model("small", torch.bfloat16)
    assert made and set(made) == {torch.bfloat16}  # every layer was created in bf16
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tied, as the 2B model
    assert model.lm_head.out_features == 1000 and estimate["weights_bytes"] > 0
    assert torch.get_default_dtype() == torch.float32  # restored
    assert isinstance(small, Architecture)


def test_memory_check_refuses_before_building(monkeypatch):
    monkeypatch.setattr(presets, "available_bytes", lambda device: 4 * 2**30)
    with pytest.raises(PresetMemoryError, match=r"needs about .* GiB .* but 4.0 GiB are free"):
        presets.check_memory("qwen2-vl-7b", 8_291_379_201, torch.bfloat16, torch.device("cpu"))
