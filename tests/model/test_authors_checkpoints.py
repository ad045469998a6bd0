"""The authors' two release layouts, as their training code and pinned libraries write them.

The folders under tests/fixtures/authors_checkpoints/ were written by transformers 4.57.1 and peft 0.17.1
(`make_fixtures.py` there), with the reference outputs of their models run by those versions: a full
fine-tune (STAMP-2B's layout) and a LoRA adapter whose saved file carries peft's `modules_to_save` /
`original_module` copies of the resized embeddings (STAMP-7B's layout)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import random_image
from safetensors.torch import load_file, save_file

from stamp.inference import StampPredictor
from stamp.model.loading import StampModelError
from stamp.model.modeling import StampModel
from stamp.processing import StampProcessor

# The loader merges the LoRA weights into the base (no adapter matmuls at inference): in float32 that
# moves logits of size ~1 by up to ~2e-5 against peft's unmerged forward, hence atol 1e-4 on logits.
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "authors_checkpoints"
REF = load_file(str(FIXTURES / "reference.safetensors"))
EMBED = "base_model.model.model.language_model.embed_tokens"


@pytest.fixture()
def folders(tmp_path):
    """Writable copies of the fixture folders (tests edit them)."""
    for name in ("base", "full", "adapter"):
        shutil.copytree(FIXTURES / name, tmp_path / name)
    return tmp_path


def _outputs(model, ids):
    """(LM logits at the last 16 positions, classifier logit at every position) as the fixtures hold."""
    with torch.no_grad():
        out = model(input_ids=ids[None], output_hidden_states=True)
        cls = model.classifier(out.hidden_states[-1])[0, :, 0]
    return out.logits[0, -16:].float(), cls.float()


def _cells(model, size=(640, 480)):
    return StampProcessor.for_model(model).encode_image(random_image(size[1], size[0])).num_cells


def test_full_checkpoint_equals_the_authors_outputs(folders):
    model = StampModel.from_pretrained(folders / "full", dtype="float32")
    logits, cls = _outputs(model, REF["full.input_ids"])
    torch.testing.assert_close(logits, REF["full.logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(cls, REF["full.classifier"], atol=1e-5, rtol=1e-5)
    assert model.stamp.position_mode == "text"
    assert 1024 <= _cells(model) <= 1280  # the folder's own preprocessor_config.json
    assert StampProcessor.for_model(model).settings.resize == "fast"  # its Qwen2VLImageProcessorFast


def test_adapter_as_peft_0_17_saves_it_loads_and_equals_peft(folders):
    keys = set(load_file(str(folders / "adapter" / "adapter_model.safetensors")))
    assert {f"{EMBED}.modules_to_save.weight", f"{EMBED}.original_module.weight"} <= keys  # peft's copies
    model = StampModel.from_pretrained(folders / "adapter", base_model=folders / "base", dtype="float32")
    logits, cls = _outputs(model, REF["adapter.input_ids"])
    torch.testing.assert_close(logits, REF["adapter.logits"], atol=1e-4, rtol=1e-4)  # merged vs unmerged LoRA
    torch.testing.assert_close(cls, REF["adapter.classifier"], atol=1e-5, rtol=1e-5)
    assert model.stamp.position_mode == "text"


def test_adapter_equals_the_installed_peft_run_directly(folders):
    """The same adapter through this environment's peft (the authors' way: base, tokens, resize, load)."""
    peft = pytest.importorskip("peft")
    from transformers import AutoTokenizer

    base = StampModel.from_pretrained(folders / "base", dtype="float32")
    tok = AutoTokenizer.from_pretrained(str(folders / "adapter"))
    base.resize_token_embeddings(len(tok), mean_resizing=False)
    direct = peft.PeftModel.from_pretrained(base, str(folders / "adapter")).eval()
    ids = REF["adapter.input_ids"]
    with torch.no_grad():
        out = direct(input_ids=ids[None], output_hidden_states=True)
        want_cls = direct.base_model.model.classifier(out.hidden_states[-1])[0, :, 0]
    ours = StampModel.from_pretrained(folders / "adapter", base_model=folders / "base", dtype="float32")
    logits, cls = _outputs(ours, ids)
    torch.testing.assert_close(logits, out.logits[0, -16:], atol=1e-4, rtol=1e-4)  # merged vs unmerged LoRA
    torch.testing.assert_close(cls, want_cls, atol=1e-5, rtol=1e-5)


def test_adapter_runs_at_the_resolution_its_folder_declares(folders):
    """The adapter folder's 1024..1280 cells, not the stock base folder's 4..16384."""
    model = StampModel.from_pretrained(folders / "adapter", base_model=folders / "base")
    cells = _cells(model)
    assert 1024 <= cells <= 1280, cells
    assert StampProcessor.for_model(model).settings.resize == "fast"
    stock = StampModel.from_pretrained(folders / "base")
    assert _cells(stock) < 1024  # the base's own sizing would have run it at fewer cells


def test_authors_checkpoints_without_a_processor_file_get_their_sizing(folders):
    (folders / "full" / "preprocessor_config.json").unlink()
    (folders / "adapter" / "preprocessor_config.json").unlink()
    full = StampModel.from_pretrained(folders / "full")
    assert 1024 <= _cells(full) <= 1280 and StampProcessor.for_model(full).settings.resize == "fast"
    adapter = StampModel.from_pretrained(folders / "adapter", base_model=folders / "base")
    assert 1024 <= _cells(adapter) <= 1280 and StampProcessor.for_model(adapter).settings.resize == "fast"


def test_disagreeing_modules_to_save_copy_is_a_one_line_error(folders):
    path = folders / "adapter" / "adapter_model.safetensors"
    sd = load_file(str(path))
    sd[f"{EMBED}.modules_to_save.weight"] = sd[f"{EMBED}.modules_to_save.weight"] + 1.0
    save_file(sd, str(path), metadata={"format": "pt"})
    with pytest.raises(StampModelError, match="disagree") as err:
        StampModel.from_pretrained(folders / "adapter", base_model=folders / "base")
    assert "\n" not in str(err.value)


def test_original_module_copy_is_not_used(folders):
    """peft keeps `original_module` as the base's inactive copy; the outputs never depend on it."""
    path = folders / "adapter" / "adapter_model.safetensors"
    sd = load_file(str(path))
    sd[f"{EMBED}.original_module.weight"] = torch.zeros_like(sd[f"{EMBED}.original_module.weight"])
    save_file(sd, str(path), metadata={"format": "pt"})
    model = StampModel.from_pretrained(folders / "adapter", base_model=folders / "base", dtype="float32")
    logits, _ = _outputs(model, REF["adapter.input_ids"])
    torch.testing.assert_close(logits, REF["adapter.logits"], atol=1e-4, rtol=1e-4)  # merged vs unmerged LoRA
    sd[f"{EMBED}.original_module.weight"] = sd[f"{EMBED}.original_module.weight"][:-1]  # wrong shape
    save_file(sd, str(path), metadata={"format": "pt"})
    with pytest.raises(StampModelError, match="original_module"):
        StampModel.from_pretrained(folders / "adapter", base_model=folders / "base")


def test_adapter_hub_id_base_needs_a_local_folder(folders):
    """Their adapter_config names the hub id; nothing is downloaded: a one-line error says what to pass."""
    cfg = json.loads((folders / "adapter" / "adapter_config.json").read_text())
    assert "/" in cfg["base_model_name_or_path"]
    with pytest.raises(StampModelError, match="base_model"):
        StampModel.from_pretrained(folders / "adapter")


def test_adapter_segments_end_to_end(folders):
    model = StampModel.from_pretrained(folders / "adapter", base_model=folders / "base")
    processor = StampProcessor.for_model(model)
    processor.set_cell_range(4, 16)  # a small image keeps the test fast
    p = StampPredictor(model, processor)
    p.set_image(random_image(112, 112))
    result = p.chat("Please segment only the circle in the image.", answer_prefix="<|seg|>", max_new_tokens=2)
    assert len(result.masks) >= 1 and result.masks[0].mask.shape == (112, 112)
    assert np.isfinite(result.masks[0].patch_logits).all()
