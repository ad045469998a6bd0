"""Block expansion (experiments/grow.py): a deeper model that computes exactly what the trained one did."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_image, save_tiny_model

from stamp.data.sample import StampSample, Turn
from stamp.inference import StampPredictor
from stamp.model.modeling import StampModel
from stamp.tiny import build_tiny_model, tiny_processor

_spec = importlib.util.spec_from_file_location(
    "grow", Path(__file__).resolve().parents[1] / "experiments" / "grow.py"
)
grow = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(grow)
grow_depth, insertion_points, main = grow.grow_depth, grow.insertion_points, grow.main


def _batch(model):
    mask = np.pad(np.ones((60, 80), np.uint8), ((40, 124), (30, 114)))
    turns = [Turn("user", "Segment."), Turn("assistant", "It is <|seg|>.")]
    sample = StampSample("t", random_image(224, 224, 7), turns, [mask])
    processor = tiny_processor()
    return processor.collate([processor.encode_sample(sample)])


def _chat(model):
    pred = StampPredictor(model, tiny_processor())
    pred.set_image(random_image(200, 260, 3))
    first = pred.chat("What is this?", max_new_tokens=6)
    second = pred.chat("Segment it.", answer_prefix="It is <|seg|>", max_new_tokens=4)  # reuses the cache
    return first.text, second.text, second.masks[0].patch_logits


def test_insertion_points():
    assert insertion_points(4, 8) == [0, 1, 2, 3]
    assert insertion_points(4, 6) == [1, 3]
    assert insertion_points(4, 5) == [3]
    for bad in (4, 9, 0):
        with pytest.raises(ValueError, match="can grow a 4-layer model"):
            insertion_points(4, bad)


def test_grown_model_computes_the_same_and_learns(tmp_path):
    model, processor = build_tiny_model(seed=2)
    model.eval()
    layers = model.config.text_config.num_hidden_layers
    batch = _batch(model)
    with torch.no_grad():
        before = model.stamp_forward(**batch)
    chat_before = _chat(model)

    new = grow_depth(model, 2 * layers)
    lm = model.model.language_model
    assert len(lm.layers) == model.config.text_config.num_hidden_layers == 2 * layers
    assert len(model.config.text_config.layer_types) == 2 * layers
    assert [layer.self_attn.layer_idx for layer in lm.layers] == list(range(2 * layers))
    assert new == [1, 3] if layers == 2 else len(new) == layers
    for k in new:
        assert not lm.layers[k].self_attn.o_proj.weight.any() and not lm.layers[k].mlp.down_proj.weight.any()
        assert lm.layers[k].self_attn.q_proj.weight.any()  # copied, not reset
    with torch.no_grad():
        after = model.stamp_forward(**batch)
    torch.testing.assert_close(after.mask_logits[0], before.mask_logits[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(after.loss, before.loss, rtol=0, atol=1e-6)
    text_a, text_b, logits = _chat(model)  # generation with the KV cache of all the layers
    assert (text_a, text_b) == chat_before[:2]
    torch.testing.assert_close(logits, chat_before[2], rtol=0, atol=1e-5)

    # saved and loaded: the same model
    model.save_stamp(tmp_path / "grown", processor)
    loaded = StampModel.from_pretrained(tmp_path / "grown")
    assert len(loaded.model.language_model.layers) == 2 * layers
    assert _chat(loaded)[:2] == chat_before[:2]

    # training moves the new layers: their zeroed projections get gradients at once
    model.train()
    model.stamp_forward(**batch).loss.backward()
    for k in new:
        assert lm.layers[k].self_attn.o_proj.weight.grad.abs().sum() > 0
        assert lm.layers[k].mlp.down_proj.weight.grad.abs().sum() > 0


def test_grow_cli(tmp_path, capsys):
    src = tmp_path / "small"
    save_tiny_model(src)
    out = tmp_path / "grown"
    assert main([str(src), "--layers", "3", "--out", str(out)]) == 0
    assert "from 2 to 3 layers" in capsys.readouterr().out
    assert StampModel.from_pretrained(out).config.text_config.num_hidden_layers == 3
    assert main([str(src), "--layers", "3", "--out", str(out)]) == 2  # exists: refused
    assert "exists and is not empty; use --force" in capsys.readouterr().err
    assert main([str(src), "--layers", "9", "--out", str(tmp_path / "x")]) == 2
    assert "can grow a 2-layer model to 3..4 layers" in capsys.readouterr().err
    assert main([str(tmp_path / "missing"), "--layers", "3", "--out", str(tmp_path / "y")]) == 2
    assert capsys.readouterr().err.count("\n") == 1  # one line, no traceback
