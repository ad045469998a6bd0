"""Original segment-anything checkpoints mapped onto transformers' SamModel, against the original code.

Fixtures (tests/refine/fixtures, made once by make_sam_fixtures.py with segment-anything itself):
a tiny random SAM in the original layout and the original SamPredictor's outputs on it; the key
layout and shapes of the released ViT-B/L/H checkpoints.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from stamp.refine import RefineError, SamFrame, SamRefiner, build_refiner
from stamp.refine.sam import sam_pixel_values
from stamp.refine.sam_authors import SamAuthorsRefiner
from stamp.refine.sam_checkpoint import (
    DECODER_HEADS,
    build_original_sam,
    load_original_sam,
    original_sam_config,
)

FIXTURES = Path(__file__).parent / "fixtures"
ATOL = 2e-5  # float32 round-off between two implementations of the same network (measured: <= 9e-6)


@pytest.fixture(scope="module")
def original_state() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "sam_tiny_original.safetensors"))


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "sam_tiny_reference.safetensors"))


@pytest.fixture(scope="module")
def pth_path(original_state, tmp_path_factory) -> Path:
    """The tiny checkpoint as the released ones are: a plain state dict written by torch.save."""
    path = tmp_path_factory.mktemp("sam_pth") / "sam_tiny.pth"
    torch.save(dict(original_state), path)
    return path


@pytest.fixture(scope="module")
def refiner(pth_path) -> SamRefiner:
    return SamRefiner(pth_path, min_agreement=0.0)


def _meta_layout(name: str) -> dict[str, torch.Tensor]:
    shapes = json.loads((FIXTURES / "sam_original_shapes.json").read_text())[name]
    return {k: torch.empty(shape, device="meta") for k, shape in shapes.items()}


def _write(state: dict[str, torch.Tensor], path: Path) -> Path:
    torch.save(state, path)
    return path


def test_config_read_from_tensor_shapes(original_state):
    cfg = original_sam_config(original_state)
    v, p, d = cfg.vision_config, cfg.prompt_encoder_config, cfg.mask_decoder_config
    # The fixture's original code: ImageEncoderViT(img_size=128, patch_size=16, embed_dim=32, depth=2,
    # num_heads=2, mlp_ratio=2, out_chans=32, window_size=3, global_attn_indexes=(1,)),
    # PromptEncoder(mask_in_chans=8), TwoWayTransformer(depth=2, mlp_dim=64), iou_head_hidden_dim=24.
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads) == (32, 2, 2)
    assert (v.image_size, v.patch_size, v.mlp_dim, v.output_channels) == (128, 16, 64, 32)
    assert (v.window_size, list(v.global_attn_indexes), v.num_pos_feats) == (3, [1], 16)
    assert (p.hidden_size, p.image_size, p.mask_input_channels, p.num_point_embeddings) == (32, 128, 8, 4)
    assert (d.hidden_size, d.num_hidden_layers, d.mlp_dim, d.iou_head_hidden_dim) == (32, 2, 64, 24)
    assert (d.num_attention_heads, d.attention_downsample_rate, d.num_multimask_outputs) == (8, 2, 3)
    assert d.layer_norm_eps == 1e-5 and v.layer_norm_eps == 1e-6


@pytest.mark.parametrize(
    "name, width, depth, heads, global_blocks",
    [
        ("vit_b", 768, 12, 12, [2, 5, 8, 11]),
        ("vit_l", 1024, 24, 16, [5, 11, 17, 23]),
        ("vit_h", 1280, 32, 16, [7, 15, 23, 31]),
    ],
)
def test_released_layouts_map_completely(name, width, depth, heads, global_blocks):
    """The layouts of sam_vit_{b,l,h}_*.pth (from segment-anything's builders) give transformers'
    published configs and fill every parameter with the right shape (meta tensors: no weights)."""
    model = build_original_sam(_meta_layout(name), source=name)
    v = model.config.vision_config
    assert (v.hidden_size, v.num_hidden_layers, v.num_attention_heads) == (width, depth, heads)
    assert list(v.global_attn_indexes) == global_blocks and v.window_size == 14
    assert (v.image_size, v.patch_size, v.output_channels, v.mlp_dim) == (1024, 16, 256, 4 * width)
    d, p = model.config.mask_decoder_config, model.config.prompt_encoder_config
    assert (d.hidden_size, d.mlp_dim, d.num_attention_heads, d.iou_head_hidden_dim) == (
        256,
        2048,
        DECODER_HEADS,
        256,
    )
    assert (p.mask_input_channels, p.image_embedding_size) == (16, 64)
    assert all(t.is_meta for t in model.state_dict().values())


def test_mapped_model_reproduces_original_predictor(refiner, reference):
    """Pixels, image embedding, low-res logits, IoU predictions and masks of the original SamPredictor."""
    image = reference["image"].numpy()
    frame = refiner.frame(image.shape[:2])
    assert frame == SamFrame((45, 70), (82, 128), 128)  # int(45 * 128 / 70 + 0.5) = int(82.79)
    from PIL import Image

    pixels = sam_pixel_values(Image.fromarray(image), frame, refiner.mean, refiner.std)
    torch.testing.assert_close(pixels, reference["pixels"], atol=1e-5, rtol=0)
    embeddings = refiner._embed(Image.fromarray(image))
    torch.testing.assert_close(embeddings, reference["features"], atol=ATOL, rtol=0)
    for case, multimask in (("points", True), ("box", True), ("all", False)):
        points = labels = boxes = masks = None
        if f"{case}_coords" in reference:
            points = torch.from_numpy(frame.transform_coords(reference[f"{case}_coords"].numpy()))[None, None]
            labels = reference[f"{case}_labels"][None, None]
        if f"{case}_box" in reference:
            boxes = torch.from_numpy(frame.transform_coords(reference[f"{case}_box"].numpy().reshape(2, 2)))
            boxes = boxes.reshape(1, 1, 4)
        if f"{case}_mask_input" in reference:
            masks = reference[f"{case}_mask_input"][None]
        low_res, iou = refiner._predict(
            embeddings, points=points, labels=labels, boxes=boxes, masks=masks, multimask=multimask
        )
        torch.testing.assert_close(low_res, reference[f"{case}_low_res"], atol=ATOL, rtol=0, msg=case)
        torch.testing.assert_close(iou, reference[f"{case}_iou"], atol=ATOL, rtol=0, msg=case)
        np.testing.assert_array_equal(
            refiner.postprocess(low_res, frame), reference[f"{case}_masks"].bool().numpy()
        )


def test_a_swapped_tensor_is_noticed(original_state, reference, tmp_path):
    """The comparison above is sensitive to the mapping: two same-shaped tensors exchanged change it."""
    state = dict(original_state)
    a, b = "image_encoder.blocks.0.attn.rel_pos_h", "image_encoder.blocks.0.attn.rel_pos_w"
    state[a], state[b] = state[b], state[a]
    model, _ = load_original_sam(_write(state, tmp_path / "swapped.pth"))
    with torch.no_grad():
        features = model.get_image_embeddings(reference["pixels"])
    assert (features - reference["features"]).abs().max() > 1e-2


def test_strict_missing_extra_and_misshapen_keys(original_state, tmp_path):
    state = dict(original_state)
    del state["mask_decoder.transformer.layers.1.norm3.bias"]
    with pytest.raises(
        RefineError, match=r"1 missing \(e\.g\. mask_decoder\.transformer\.layers\.1\.layer_norm3\.bias\)"
    ):
        load_original_sam(_write(state, tmp_path / "missing.pth"))
    state = dict(original_state, **{"mask_decoder.hq_token.weight": torch.zeros(1, 32)})
    with pytest.raises(RefineError, match=r"1 unexpected \(e\.g\. mask_decoder\.hq_token\.weight\)") as err:
        load_original_sam(_write(state, tmp_path / "extra.pth"))
    assert "\n" not in str(err.value)
    state = dict(original_state, **{"mask_decoder.iou_token.weight": torch.zeros(1, 32, 1)})
    with pytest.raises(RefineError, match="1 misshapen"):
        load_original_sam(_write(state, tmp_path / "misshapen.pth"))
    state = {k: v for k, v in original_state.items() if k != "image_encoder.pos_embed"}
    with pytest.raises(RefineError, match="no tensor 'image_encoder.pos_embed'"):
        load_original_sam(_write(state, tmp_path / "no_pos.pth"))
    with pytest.raises(RefineError, match="not found"):
        load_original_sam(tmp_path / "absent.pth")


_UNPICKLED: list[str] = []


def _record_unpickling() -> dict:
    _UNPICKLED.append("ran")
    return {}


class _Payload:
    """Unpickling this object calls a function: what `weights_only=True` must refuse to do."""

    def __reduce__(self):
        return (_record_unpickling, ())


def test_checkpoint_is_read_with_weights_only(original_state, tmp_path):
    path = tmp_path / "payload.pth"
    torch.save({**original_state, "extra": _Payload()}, path)
    with pytest.raises(RefineError, match="cannot read SAM checkpoint") as err:
        load_original_sam(path)
    assert _UNPICKLED == [] and "\n" not in str(err.value)
    (tmp_path / "text.pth").write_text("not a checkpoint")
    with pytest.raises(RefineError, match="cannot read SAM checkpoint"):
        load_original_sam(tmp_path / "text.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(RefineError, match="not a state dict"):
        load_original_sam(tmp_path / "list.pth")


def test_safetensors_file_and_normalisation(original_state, tmp_path, pth_path):
    model, mean_std = load_original_sam(FIXTURES / "sam_tiny_original.safetensors")
    assert isinstance(model, transformers.SamModel) and mean_std is None
    state = dict(original_state)
    state["pixel_mean"] = torch.tensor([123.675, 116.28, 103.53]).view(-1, 1, 1)
    state["pixel_std"] = torch.tensor([58.395, 57.12, 57.375]).view(-1, 1, 1)
    save_file(state, str(tmp_path / "with_norm.safetensors"))
    _, (mean, std) = load_original_sam(tmp_path / "with_norm.safetensors")
    np.testing.assert_allclose(mean, (0.485, 0.456, 0.406), rtol=1e-6)
    np.testing.assert_allclose(std, (0.229, 0.224, 0.225), rtol=1e-6)
    assert SamRefiner(pth_path).mean == (0.485, 0.456, 0.406)  # the ImageNet default without them


def test_specs_build_refiners_from_checkpoint_files(pth_path, tiny_sam_dir, tiny_sam2_dir, monkeypatch):
    sam = build_refiner(f"sam:{pth_path}")
    assert isinstance(sam, SamRefiner) and sam.model_type == "sam" and sam.mask_input_size == 32
    authors = build_refiner(f"sam-authors:{pth_path}")
    assert isinstance(authors, SamAuthorsRefiner) and authors.seed == 0 and authors.n_points == 10
    assert isinstance(build_refiner(f"SAM-Authors:{tiny_sam_dir}"), SamAuthorsRefiner)  # a directory too
    monkeypatch.setenv("STAMP_SAM_PATH", str(pth_path))  # no environment variable decides it
    with pytest.raises(RefineError, match="'sam-authors' needs a SAM directory or checkpoint file"):
        build_refiner("sam-authors")
    with pytest.raises(RefineError, match="'sam-authors:PATH'"):
        build_refiner("sam-author:x")
    with pytest.raises(RefineError, match="SAM checkpoint not found"):
        build_refiner(f"sam:{pth_path.parent / 'absent.pth'}")
    with pytest.raises(RefineError, match="needs a SAM v1 model"):
        SamAuthorsRefiner(tiny_sam2_dir)
