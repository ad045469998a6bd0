"""Images more elongated than the backbone takes (long / short side over 200, e.g. 416 x 1) are padded to
its limit and their masks cropped back: the user gets a mask of the image's own size, in both resize
modes; every other image is encoded and post-processed exactly as before."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from helpers import random_image
from PIL import Image

from stamp.imaging.resize import MAX_ASPECT, pad_to_aspect
from stamp.inference import StampPredictor
from stamp.inference.predictor import logits_to_mask
from stamp.processing import StampProcessor
from stamp.tiny import tiny_processor


def _predictor(model, resize: str, refine: str = "none") -> StampPredictor:
    base = tiny_processor()
    processor = StampProcessor(base.tokenizer, replace(base.settings, resize=resize))
    return StampPredictor(model, processor, refine=refine)


def test_pad_to_aspect():
    wide = random_image(1, 416)
    padded = pad_to_aspect(wide)
    assert padded.size == (416, 3) and 416 / 3 <= MAX_ASPECT
    rows = np.asarray(padded)
    assert (rows == np.asarray(wide)[0]).all()  # the one row, repeated
    assert pad_to_aspect(random_image(416, 1)).size == (3, 416)
    assert pad_to_aspect(random_image(2, 400)).size == (400, 2)  # exactly the limit: as it is
    normal = random_image(30, 50)
    assert pad_to_aspect(normal) is normal


@pytest.mark.parametrize("resize", ["pil", "fast"])
@pytest.mark.parametrize("hw", [(1, 416), (416, 1), (3, 1000)])
def test_an_elongated_image_gets_a_mask_of_its_own_size(tiny_model, resize, hw):
    h, w = hw
    image = random_image(h, w, 4)
    pred = _predictor(tiny_model, resize)
    enc = pred.processor.encode_image(image)
    assert enc.size == (w, h) and enc.canvas is not None
    pred.set_image(image)
    res = pred.chat("Segment it.", answer_prefix="<|seg|>", max_new_tokens=0)
    m = res.masks[0]
    assert m.mask.shape == m.probs.shape == (h, w)
    # the mask is the padded image's mask, cropped to the original's pixels
    cw, ch = enc.canvas_size
    full = logits_to_mask(torch.from_numpy(m.patch_logits), (ch, cw), pred.threshold, pred.upsample)
    np.testing.assert_array_equal(m.mask, full.mask[:h, :w])
    np.testing.assert_array_equal(m.probs, full.probs[:h, :w])
    # streaming post-processing and a refiner agree on the shape
    assert pred.postprocess_logits(torch.from_numpy(m.patch_logits), image).mask.shape == (h, w)
    guided = _predictor(tiny_model, resize, refine="guided")
    guided.set_image(image)
    assert guided.chat("Segment it.", answer_prefix="<|seg|>", max_new_tokens=0).masks[0].mask.shape == (h, w)


@pytest.mark.parametrize("resize", ["pil", "fast"])
def test_normal_images_are_untouched(tiny_model, resize):
    image = random_image(90, 140, 6)
    pred = _predictor(tiny_model, resize)
    enc = pred.processor.encode_image(image)
    assert enc.canvas is None and enc.canvas_size == enc.size == (140, 90)
    pred.set_image(image)
    m = pred.chat("Segment it.", answer_prefix="<|seg|>", max_new_tokens=0).masks[0]
    want = logits_to_mask(torch.from_numpy(m.patch_logits), (90, 140), pred.threshold, pred.upsample)
    assert np.array_equal(m.mask, want.mask) and np.array_equal(m.probs, want.probs)


def test_a_padded_training_mask_ignores_the_padding(tiny_model, tiny_processor):
    from stamp.data.sample import StampSample, Turn

    processor = StampPredictor(tiny_model, tiny_processor, refine="none").processor
    mask = np.ones((1, 416), np.uint8)
    sample = StampSample(
        "x",
        Image.fromarray(np.zeros((1, 416, 3), np.uint8)),
        [Turn("user", "a"), Turn("assistant", "<|seg|>")],
        [mask],
    )
    out = processor.encode_sample(sample)
    target, weight = out["targets"][0], out["weights"][0]
    assert target.shape == weight.shape == out["image"].grid_hw
    assert (weight < 1).any()  # the padded rows weigh nothing
