"""Each checkpoint layout of stamp.model.loading, built as a tiny fake checkpoint on disk."""

import json

import numpy as np
import pytest
import torch
from helpers import random_image
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast, Qwen2VLForConditionalGeneration

from stamp.inference import StampPredictor
from stamp.model.loading import StampModelError
from stamp.model.modeling import StampModel
from stamp.model.tokens import IM_END, PAD, QWEN_SPECIAL_TOKENS
from stamp.processing import StampProcessor


def _legacy(key: str) -> str:
    return key.replace("model.language_model.", "model.").replace("model.visual.", "visual.")


def _mask_logits(model, image, processor=None):
    p = StampPredictor(model, processor)
    p.set_image(image)
    return p.chat("Segment.", answer_prefix="<|seg|>", max_new_tokens=3).masks[0].patch_logits


def _rewrite(path, fn):
    sd = load_file(str(path / "model.safetensors"))
    save_file(
        {fn(k): v for k, v in sd.items() if fn(k) is not None},
        str(path / "model.safetensors"),
        metadata={"format": "pt"},
    )


def test_authors_full_checkpoint_with_legacy_prefixes(tmp_path, tiny_model, tiny_processor):
    d = tmp_path / "authors"
    tiny_model.save_stamp(d, tiny_processor)
    _rewrite(d, _legacy)
    cfg = json.loads((d / "config.json").read_text())
    del cfg["stamp"]  # the authors' config has no stamp section
    (d / "config.json").write_text(json.dumps(cfg))
    (d / "stamp_processor.json").unlink()
    loaded = StampModel.from_pretrained(d)
    assert loaded.stamp.position_mode == "text"  # what their checkpoints were trained with
    assert loaded.stamp.seg_token_id == tiny_model.stamp.seg_token_id
    for (k1, v1), (k2, v2) in zip(
        sorted(tiny_model.state_dict().items()), sorted(loaded.state_dict().items())
    ):
        assert k1 == k2 and torch.equal(v1, v2)


def test_stock_qwen2vl_directory_gets_stamp_parts(tmp_path, tiny_model):
    """A plain Qwen2-VL (no STAMP tokens, no classifier) loads with tokens added and a new head."""
    config = tiny_model.config.__class__.from_dict(tiny_model.config.to_dict())
    del config.stamp
    base_vocab = 256 + len(QWEN_SPECIAL_TOKENS)  # the byte tokenizer without <|seg|>/<|mask|>
    config.text_config.vocab_size = base_vocab
    stock = Qwen2VLForConditionalGeneration(config)
    d = tmp_path / "stock"
    stock.save_pretrained(d)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    t = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    t.decoder = decoders.ByteLevel()
    t.add_special_tokens(list(QWEN_SPECIAL_TOKENS))
    PreTrainedTokenizerFast(tokenizer_object=t, eos_token=IM_END, pad_token=PAD).save_pretrained(d)
    loaded = StampModel.from_pretrained(d)
    assert loaded.stamp.position_mode == "grid"
    assert loaded.get_input_embeddings().weight.shape[0] == base_vocab + 2
    assert len(StampProcessor.for_model(loaded).tokenizer) == base_vocab + 2
    # no preprocessor config: the paper's sizing (1024..1280 cells) applies, 224x224 -> 896x896 -> 32x32
    assert _mask_logits(loaded, random_image(224, 224)).shape == (32, 32)


def test_missing_and_unexpected_weights_are_errors(tmp_path, tiny_model, tiny_processor):
    d = tmp_path / "broken"
    tiny_model.save_stamp(d, tiny_processor)
    _rewrite(d, lambda k: None if "layers.1.mlp.up_proj" in k else k)
    with pytest.raises(StampModelError, match="missing"):
        StampModel.from_pretrained(d)
    d2 = tmp_path / "extra"
    tiny_model.save_stamp(d2, tiny_processor)
    sd = load_file(str(d2 / "model.safetensors"))
    sd["something.else"] = torch.zeros(2)
    save_file(sd, str(d2 / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(StampModelError, match="unexpected"):
        StampModel.from_pretrained(d2)


def test_lora_adapter_on_base(tmp_path, tiny_model, tiny_processor):
    peft = pytest.importorskip("peft")
    base = tmp_path / "base"
    tiny_model.save_stamp(base, tiny_processor)
    cfg = peft.LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=["q_proj", "v_proj"],
        modules_to_save=["classifier"],
        use_rslora=True,
    )
    trained = StampModel.from_pretrained(base)
    pm = peft.get_peft_model(trained, cfg)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.1)
    adapter = tmp_path / "adapter"
    pm.save_pretrained(str(adapter))
    sd = load_file(str(adapter / "adapter_model.safetensors"))
    save_file({_legacy_adapter(k): v for k, v in sd.items()}, str(adapter / "adapter_model.safetensors"))
    merged_ref = pm.merge_and_unload()
    image = random_image(224, 224, 1)
    loaded = StampModel.from_pretrained(adapter, base_model=base)
    np.testing.assert_allclose(_mask_logits(loaded, image), _mask_logits(merged_ref, image), atol=1e-5)
    placed = StampModel.from_pretrained(adapter, base_model=base, device_map="auto")  # merged, then placed
    np.testing.assert_allclose(_mask_logits(placed, image), _mask_logits(merged_ref, image), atol=1e-5)
    with pytest.raises(StampModelError, match="base model"):
        StampModel.from_pretrained(adapter, base_model=tmp_path / "nope")


def _legacy_adapter(key: str) -> str:
    return key.replace("base_model.model.model.language_model.", "base_model.model.model.")


def test_not_a_model_directory(tmp_path):
    with pytest.raises(StampModelError, match="not found"):
        StampModel.from_pretrained(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(StampModelError, match="config.json"):
        StampModel.from_pretrained(tmp_path / "empty")


def test_hub_id_says_models_are_local_folders():
    with pytest.raises(StampModelError, match="huggingface-cli download Qwen/Qwen2-VL-2B-Instruct") as err:
        StampModel.from_pretrained("Qwen/Qwen2-VL-2B-Instruct")
    assert "\n" not in str(err.value) and "nothing is downloaded" in str(err.value)
    with pytest.raises(
        StampModelError, match=r"^model directory not found: runs/x/y/model \(a local folder, "
    ):
        StampModel.from_pretrained("runs/x/y/model")


def test_the_bundled_model_by_name_and_a_copy_of_it_behave_the_same(tmp_path):
    """A checkpoint carries its own defaults (dtype, threshold, refinement): loaded by its name or from
    a copy saved anywhere, the bundled model gives the same answer and the same mask."""
    model = StampModel.from_pretrained("tiny-synth")
    assert next(model.parameters()).dtype == torch.float32  # saved in bf16, runs in fp32 everywhere
    processor = StampProcessor.from_pretrained("tiny-synth")
    model.save_pretrained(tmp_path / "copy")
    processor.save_pretrained(tmp_path / "copy")  # as in transformers: the processor saves itself
    copy = StampModel.from_pretrained(tmp_path / "copy")
    assert next(copy.parameters()).dtype == torch.float32 and copy.stamp == model.stamp
    image = random_image(128, 160, seed=5)
    results = []
    for m in (model, copy):
        predictor = StampPredictor(m)
        assert predictor.refiner is not None and predictor.threshold == m.stamp.mask_threshold
        predictor.set_image(image)
        results.append(predictor.chat("Please segment the red circle.", answer_prefix="Sure, it is <|seg|>"))
    a, b = results
    assert a.text == b.text and len(a.masks) == len(b.masks) >= 1
    assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a.masks, b.masks))


def test_model_and_processor_save_and_load_apart(tmp_path, tiny_model, tiny_processor):
    """transformers habits: the model and its processor each `save_pretrained` into one folder (which
    `save_stamp` writes at once, atomically); `from_pretrained` loads the network, which holds no
    processor, and the predictor reads the processor from the folder the model came from."""
    d = tmp_path / "m"
    tiny_model.save_pretrained(d)
    assert not (d / "tokenizer.json").exists()  # the network writes only itself
    tiny_processor.save_pretrained(d)
    assert {"config.json", "model.safetensors", "tokenizer.json", "stamp_processor.json"} <= {
        p.name for p in d.iterdir()
    }
    model = StampModel.from_pretrained(d)
    assert not hasattr(model, "processor") and model.checkpoint.layout == "stamp"
    predictor = StampPredictor(model)
    assert predictor.processor.settings == tiny_processor.settings
    assert predictor.processor.tokenizer.get_vocab() == tiny_processor.tokenizer.get_vocab()
    image = random_image(224, 224, 3)
    np.testing.assert_allclose(
        _mask_logits(model, image), _mask_logits(tiny_model, image, tiny_processor), atol=1e-6
    )


def test_old_checkpoints_naming_a_mask_decoder(tmp_path, tiny_model, tiny_processor):
    """Configs written when STAMP's settings named a mask decoder: STAMP's own ("placeholders", no label
    ids) loads as before; another is refused in one line naming the script that decodes it."""
    d = tmp_path / "old"
    tiny_model.save_stamp(d, tiny_processor)
    cfg = json.loads((d / "config.json").read_text())
    cfg["stamp"].update(mask_decoder="placeholders", label_token_ids=None)
    (d / "config.json").write_text(json.dumps(cfg))
    loaded = StampModel.from_pretrained(d)
    assert loaded.stamp == tiny_model.stamp
    cfg["stamp"].update(mask_decoder="next_token", label_token_ids=[48, 49])
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(StampModelError) as err:
        StampModel.from_pretrained(d)
    message = str(err.value)
    assert "\n" not in message and str(d) in message and "'next_token'" in message
    assert "python experiments/next_token.py" in message


def test_transformers_spellings_torch_dtype_and_device_map():
    """`torch_dtype` is an alias of `dtype`; `device_map` ("cpu", "auto", a dict) places the weights as
    transformers does (accelerate); contradicting arguments are one-line errors."""
    alias = StampModel.from_pretrained("tiny-synth", torch_dtype="bfloat16")
    assert next(alias.parameters()).dtype == torch.bfloat16
    same = StampModel.from_pretrained("tiny-synth", dtype=torch.bfloat16, torch_dtype="bf16")
    assert next(same.parameters()).dtype == torch.bfloat16
    reference = StampModel.from_pretrained("tiny-synth")
    image = random_image(96, 128, seed=2)
    want = _mask_logits(reference, image)
    for device_map in ("cpu", "auto", {"": "cpu"}):
        placed = StampModel.from_pretrained("tiny-synth", device_map=device_map)
        assert placed.device.type == "cpu" and not placed.training
        assert np.array_equal(_mask_logits(placed, image), want)
    with pytest.raises(StampModelError, match=r"dtype='float32' and torch_dtype='bfloat16' differ"):
        StampModel.from_pretrained("tiny-synth", dtype="float32", torch_dtype="bfloat16")
    with pytest.raises(StampModelError, match="give one"):
        StampModel.from_pretrained("tiny-synth", device="cpu", device_map="auto")
