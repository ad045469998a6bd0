"""SAM refinement with tiny random checkpoints: prompts, frames, padding, determinism, fallback, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from stamp.refine import (
    GuidedRefiner,
    NoRefiner,
    RefineError,
    RefineResult,
    SamFrame,
    SamRefiner,
    build_refiner,
    mask_prompt,
)

H, W = 300, 517  # non-square on purpose
ROWS, COLS = (60, 220), (80, 320)  # coarse mask: rows 60..219, cols 80..319


def _inputs():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
    mask = np.zeros((H, W), dtype=bool)
    mask[ROWS[0] : ROWS[1], COLS[0] : COLS[1]] = True
    gh, gw = H // 28, W // 28  # 10 x 18 cells (the grid covers the whole image)
    probs = np.zeros((gh, gw), dtype=np.float32)
    probs[
        round(ROWS[0] / H * gh) : round(ROWS[1] / H * gh), round(COLS[0] / W * gw) : round(COLS[1] / W * gw)
    ] = 0.9
    return image, probs, mask


@pytest.fixture(scope="module")
def refiner(tiny_sam_dir):
    return SamRefiner(tiny_sam_dir, n_points=3, seed=0, min_agreement=0.0)


def test_letterbox_frame_hand_computed():
    frame = SamFrame.letterbox((H, W), 1024)
    # scale = 1024 / 517; new h = int(300 * 1024 / 517 + 0.5) = int(594.70) = 594; new w = 1024.
    assert frame.resized_size == (594, 1024)
    xy = frame.transform_coords(np.array([[207.0, 137.0], [516.0, 299.0]]))
    np.testing.assert_allclose(
        xy, [[207 * 1024 / 517, 137 * 594 / 300], [1024 * 516 / 517, 299 * 594 / 300]], rtol=1e-6
    )
    assert SamFrame.letterbox((517, 300), 1024).resized_size == (1024, 594)
    assert SamFrame.stretch((H, W), 1024).resized_size == (1024, 1024)


def test_prompts_inside_outside_and_in_frame(refiner):
    image, probs, mask = _inputs()
    p = refiner.prompts((H, W), probs, mask)
    assert p.frame.resized_size == (74, 128)  # int(300 * 128 / 517 + 0.5) = int(74.77)
    pos, neg = p.points_xy[p.labels == 1], p.points_xy[p.labels == 0]
    assert len(pos) == 3 and len(neg) >= 1
    assert all(mask[int(y), int(x)] for x, y in pos)
    assert not any(mask[int(y), int(x)] for x, y in neg)
    for x, y in neg:  # at least one 28 px cell away from the mask
        dy = max(ROWS[0] - y, y - (ROWS[1] - 1), 0)
        dx = max(COLS[0] - x, x - (COLS[1] - 1), 0)
        assert max(dx, dy) >= 28
    expected = p.points_xy * np.array([128 / 517, 74 / 300], dtype=np.float32)
    np.testing.assert_allclose(p.input_points[0, 0].numpy(), expected, rtol=1e-6)
    np.testing.assert_array_equal(p.box_xyxy, [80, 60, 319, 219])
    np.testing.assert_allclose(
        p.input_boxes[0, 0].numpy(),
        [80 * 128 / 517, 60 * 74 / 300, 319 * 128 / 517, 219 * 74 / 300],
        rtol=1e-6,
    )
    assert p.input_points.shape == (1, 1, len(p.labels), 2) and p.input_labels.shape == (1, 1, len(p.labels))


def test_mask_prompt_padding_is_negative(refiner):
    image, probs, mask = _inputs()
    prompt = refiner.prompts((H, W), probs, mask).input_masks
    assert prompt.shape == (1, 1, 32, 32)
    first_pad_row = math.ceil(74 * 32 / 128)  # 19: rows below hold only padding
    assert torch.all(prompt[0, 0, first_pad_row:] == -20.0)
    assert prompt[0, 0, :first_pad_row].max() > 0  # the object is there, positive
    # Full-size SAM frame: 1024 -> 256 mask input; padding below row ceil(594 / 4) = 149.
    big = mask_prompt(probs, SamFrame.letterbox((H, W), 1024), 256)
    assert big.shape == (1, 1, 256, 256)
    assert torch.all(big[0, 0, 149:] == -20.0) and big[0, 0, :148].max() > 0
    # Logits fed back between passes get their padding reset too (SAM's output there is arbitrary).
    fed_back = refiner._reset_padding(torch.full((32, 32), 5.0), refiner.frame((H, W)))
    assert torch.all(fed_back[first_pad_row:] == -20.0) and torch.all(fed_back[:first_pad_row] == 5.0)


def test_refine_is_deterministic(tiny_sam_dir, refiner):
    image, probs, mask = _inputs()
    other = SamRefiner(tiny_sam_dir, n_points=3, seed=0, min_agreement=0.0)
    a, b = refiner.prompts((H, W), probs, mask), other.prompts((H, W), probs, mask)
    np.testing.assert_array_equal(a.points_xy, b.points_xy)
    np.testing.assert_array_equal(a.labels, b.labels)
    r1, r2, r3 = (
        refiner.refine(image, probs, mask),
        refiner.refine(image, probs, mask),
        other.refine(image, probs, mask),
    )
    assert isinstance(r1, RefineResult) and r1.mask.shape == (H, W) and r1.mask.dtype == bool
    assert not r1.used_fallback and r1.warning is None and 0.0 <= r1.score <= 1.0
    np.testing.assert_array_equal(r1.mask, r2.mask)
    np.testing.assert_array_equal(r1.mask, r3.mask)


def test_fallback_when_sam_disagrees(tiny_sam_dir):
    image, probs, mask = _inputs()
    strict = SamRefiner(tiny_sam_dir, min_agreement=1.01)
    out = strict.refine(image, probs, mask)
    assert out.used_fallback and "coarse mask" in out.warning
    np.testing.assert_array_equal(out.mask, mask)


def test_empty_coarse_mask_skips_sam(refiner, monkeypatch):
    image, probs, mask = _inputs()
    calls = []
    monkeypatch.setattr(refiner, "_embed", lambda img: calls.append(img))
    out = refiner.refine(image, probs * 0, np.zeros_like(mask))
    assert not out.mask.any() and not out.used_fallback and calls == []


def test_image_embedding_is_cached(tiny_sam_dir):
    image, probs, mask = _inputs()
    ref = SamRefiner(tiny_sam_dir, min_agreement=0.0)
    calls = []
    original = ref.model.get_image_embeddings
    ref.model.get_image_embeddings = lambda pixels: calls.append(1) or original(pixels)
    ref.refine(image, probs, mask)
    ref.refine(image, probs, mask[::-1].copy())
    assert len(calls) == 1


def test_input_validation(refiner):
    image, probs, mask = _inputs()
    with pytest.raises(ValueError, match="does not match"):
        refiner.refine(image, probs, mask[:-1])
    with pytest.raises(ValueError):
        refiner.refine(image, probs[0], mask)


def test_sam2_refiner(tiny_sam2_dir):
    image, probs, mask = _inputs()
    ref = SamRefiner(tiny_sam2_dir, min_agreement=0.0)
    assert ref.model_type == "sam2" and ref.frame((H, W)).resized_size == (128, 128)
    p = ref.prompts((H, W), probs, mask)
    np.testing.assert_allclose(
        p.input_points[0, 0].numpy(), p.points_xy * np.array([128 / 517, 128 / 300]), rtol=1e-6
    )
    out = ref.refine(image, probs, mask)
    assert out.mask.shape == (H, W) and out.mask.dtype == bool


def test_build_refiner(tiny_sam_dir, tmp_path, monkeypatch):
    image, probs, mask = _inputs()
    assert isinstance(build_refiner("none"), NoRefiner)
    assert isinstance(build_refiner(" Guided "), GuidedRefiner)
    np.testing.assert_array_equal(build_refiner("none").refine(image, probs, mask).mask, mask)
    assert build_refiner("guided").refine(image, probs, mask).mask.shape == (H, W)
    assert isinstance(build_refiner(f"sam:{tiny_sam_dir}"), SamRefiner)
    monkeypatch.setenv("STAMP_SAM_PATH", str(tiny_sam_dir))  # no environment variable decides it
    with pytest.raises(RefineError, match="'sam' needs a SAM directory or checkpoint file: use 'sam:PATH'"):
        build_refiner("sam")
    with pytest.raises(RefineError, match="unknown refiner"):
        build_refiner("crf")
    with pytest.raises(RefineError, match="not found"):
        build_refiner(f"sam:{tmp_path / 'missing'}")
    with pytest.raises(RefineError, match="no config.json"):
        build_refiner(f"sam:{tmp_path}")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(RefineError, match="unsupported"):
        build_refiner(f"sam:{tmp_path}")
    (tmp_path / "config.json").write_text((tiny_sam_dir / "config.json").read_text())  # no weights
    with pytest.raises(RefineError, match="cannot load"):
        build_refiner(f"sam:{tmp_path}")
    for err in (RefineError("x"),):
        assert isinstance(err, ValueError)


def test_preprocessing_and_coords_match_transformers_sam_processor():
    transformers = pytest.importorskip("transformers")
    if not hasattr(transformers, "SamImageProcessorPil"):
        pytest.skip("no torchvision-free SAM image processor in this transformers")
    from stamp.refine.sam import IMAGENET_MEAN, IMAGENET_STD, sam_pixel_values

    image, _, _ = _inputs()
    ref = transformers.SamImageProcessorPil()(images=image, return_tensors="pt")
    frame = SamFrame.letterbox((H, W), 1024)
    assert tuple(ref["reshaped_input_sizes"][0].tolist()) == frame.resized_size
    ours = sam_pixel_values(image, frame, IMAGENET_MEAN, IMAGENET_STD)
    torch.testing.assert_close(ours, ref["pixel_values"].float(), atol=1e-5, rtol=0)
    processor = transformers.SamProcessor(image_processor=transformers.SamImageProcessorPil())
    enc = processor(
        images=image, input_points=[[[207.0, 137.0]]], input_boxes=[[[80, 60, 319, 219]]], return_tensors="pt"
    )
    np.testing.assert_allclose(
        enc["input_points"][0, 0].numpy(), frame.transform_coords([[207.0, 137.0]]), rtol=1e-6
    )
    np.testing.assert_allclose(
        enc["input_boxes"][0, 0].numpy(), frame.transform_coords([[80, 60], [319, 219]]).reshape(4), rtol=1e-6
    )
