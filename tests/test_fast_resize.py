"""The "fast" resize equals transformers' fast Qwen2-VL image processor; "pil" stays as it was; the mode is
saved, reloaded and read from a checkpoint folder's preprocessor_config.json.

The reference tensors come from tests/fixtures/make_fast_processor_fixtures.py (run once with
torchvision, transformers 5.24.0, torch 2.14.1): seven small images of several modes and sizes, each
through the real processor. Measured: our path equals them bit for bit (max |diff| 0, no uint8 rounding
difference) on every case, with torch 2.13 and 2.14 and with ATEN_CPU_CAPABILITY=default; the test
allows 1e-5.
"""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from transformers import Qwen2VLImageProcessorPil

from stamp.imaging import load_image
from stamp.imaging.resize import patchify, qwen2vl_fast_pixels, resize_bicubic_antialias
from stamp.model.tokens import build_byte_tokenizer
from stamp.processing import (
    PROCESSOR_FILE,
    ProcessorSettings,
    StampProcessor,
    resize_mode_for,
    settings_from_preprocessor_config,
)

FIXTURE = Path(__file__).parent / "fixtures" / "qwen2vl_fast_processor.safetensors"
TOLERANCE = 1e-5


def _fixtures() -> tuple[dict, dict[str, torch.Tensor]]:
    with safe_open(str(FIXTURE), "pt") as f:
        meta = f.metadata()
    return meta, load_file(str(FIXTURE))


META, TENSORS = _fixtures()
CASES = json.loads(META["cases"])  # name -> PIL mode
RESIZED = [name for name in CASES if name != "exact"]  # "exact" is already 28x56: no resize


@pytest.fixture(scope="module")
def tokenizer():
    return build_byte_tokenizer()


def _input(name: str) -> Image.Image:
    return Image.fromarray(TENSORS[f"{name}.image"].numpy(), mode=CASES[name])


def _processor(tokenizer, resize: str) -> StampProcessor:
    settings = ProcessorSettings(int(META["min_pixels"]), int(META["max_pixels"]), resize=resize)
    return StampProcessor(tokenizer, settings)


@pytest.mark.parametrize("name", list(CASES))
def test_fast_resize_equals_the_fast_processor(tokenizer, name):
    enc = _processor(tokenizer, "fast").encode_image(_input(name))  # L / RGBA converted by load_image
    ref = TENSORS[f"{name}.pixel_values"]
    assert enc.pixel_values.dtype == torch.float32
    assert enc.pixel_values.shape == ref.shape
    assert enc.grid_thw.tolist() == TENSORS[f"{name}.image_grid_thw"][0].tolist()
    assert (enc.pixel_values - ref).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("name", RESIZED)
def test_pil_resize_is_unchanged_and_differs_from_fast(tokenizer, name):
    """ "pil" is transformers' PIL processor as before; on resized images it is measurably not "fast"
    (which is what lets the test above fail for the wrong resize)."""
    image = _input(name)
    enc = _processor(tokenizer, "pil").encode_image(image)
    pil = Qwen2VLImageProcessorPil(min_pixels=int(META["min_pixels"]), max_pixels=int(META["max_pixels"]))
    expected = pil(images=[load_image(image)], return_tensors="pt")  # what encode_image did before
    assert torch.equal(enc.pixel_values, expected["pixel_values"])
    assert (enc.pixel_values - TENSORS[f"{name}.pixel_values"]).abs().max().item() > 1e-3


def test_default_is_pil_and_old_settings_files_load_as_pil(tmp_path, tokenizer):
    assert ProcessorSettings().resize == "pil"
    old = {"min_pixels": 3136, "max_pixels": 12544, "system_prompt": None, "target_threshold": 0.5}
    (tmp_path / PROCESSOR_FILE).write_text(json.dumps(old))
    proc = StampProcessor._from_folder(tmp_path, tokenizer)
    assert proc.settings.resize == "pil" and proc.image_processor is not None
    with pytest.raises(ValueError, match="resize must be one of"):
        ProcessorSettings(resize="bilinear")


@pytest.mark.parametrize("resize", ["fast", "pil"])
def test_settings_round_trip_through_save_and_from_pretrained(tmp_path, tokenizer, resize):
    settings = ProcessorSettings(5 * 784, 9 * 784, system_prompt=None, target_threshold=None, resize=resize)
    StampProcessor(tokenizer, settings).save_pretrained(tmp_path)
    assert json.loads((tmp_path / PROCESSOR_FILE).read_text())["resize"] == resize
    # a preprocessor_config.json beside it must not win over the stamp-seg file
    other = "Qwen2VLImageProcessorPil" if resize == "fast" else "Qwen2VLImageProcessorFast"
    (tmp_path / "preprocessor_config.json").write_text(json.dumps({"image_processor_type": other}))
    assert StampProcessor._from_folder(tmp_path, tokenizer).settings == settings


@pytest.mark.parametrize("resize", ["fast", "pil"])
def test_pixel_and_cell_ranges_keep_the_resize(tokenizer, resize):
    proc = StampProcessor(
        tokenizer, ProcessorSettings(system_prompt="s", target_threshold=0.3, resize=resize)
    )
    proc.set_cell_range(2, 3)
    assert proc.settings == ProcessorSettings(2 * 784, 3 * 784, "s", 0.3, resize)
    proc.set_pixel_range(4 * 784, 6 * 784)
    assert proc.settings == ProcessorSettings(4 * 784, 6 * 784, "s", 0.3, resize)
    assert (proc.image_processor is None) == (resize == "fast")
    enc = proc.encode_image(_input("noise_down"))
    assert 4 <= enc.num_cells <= 6


@pytest.mark.parametrize(
    "image_processor_type, expected",
    [
        ("Qwen2VLImageProcessorFast", "fast"),  # what the authors' transformers 4.57 saves
        ("Qwen2VLImageProcessor", "fast"),  # 4.57 still loads the fast class for this name
        ("Qwen2VLImageProcessorPil", "pil"),  # transformers 5's PIL class
        (None, "pil"),  # 4.57 falls back to the model config and picks the slow class
    ],
)
def test_from_pretrained_reads_the_resize_from_preprocessor_config(
    tmp_path, tokenizer, image_processor_type, expected
):
    pre = {"min_pixels": 1024 * 784, "max_pixels": 1280 * 784, "merge_size": 2, "patch_size": 14}
    if image_processor_type is not None:
        pre["image_processor_type"] = image_processor_type
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(pre))
    settings = StampProcessor._from_folder(tmp_path, tokenizer).settings
    assert (settings.resize, settings.min_pixels, settings.max_pixels) == (expected, 1024 * 784, 1280 * 784)
    assert resize_mode_for(image_processor_type) == expected
    # `size` is the fallback for the range; the other settings are kept
    base = ProcessorSettings(system_prompt=None)
    sized = settings_from_preprocessor_config(
        {"size": {"shortest_edge": 3136, "longest_edge": 6272}, "image_processor_type": "X"}, base
    )
    assert sized == dataclasses.replace(base, min_pixels=3136, max_pixels=6272, resize="pil")


def test_authors_settings_use_the_fast_resize():
    assert ProcessorSettings.authors().resize == "fast"


def test_resize_keeps_an_image_of_the_target_size_and_rejects_floats():
    x = torch.randint(0, 256, (3, 28, 56), dtype=torch.uint8)
    assert resize_bicubic_antialias(x, 28, 56) is x
    assert resize_bicubic_antialias(x, 56, 84).dtype == torch.uint8
    with pytest.raises(ValueError, match="uint8"):
        resize_bicubic_antialias(x.float(), 56, 84)


def test_patchify_orders_patches_by_merged_cell():
    """The docstring's example (a (3, 28, 56) image -> rows 0-3 the left cell's 2x2 patches in raster
    order, rows 4-7 the right cell's), and a 2 x 3 cell image: cells in raster order, each row
    (C, T=2, 14, 14) with the two frames equal."""
    for height, width in [(28, 56), (56, 84)]:
        y, x = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
        image = torch.stack([y // 14, x // 14, torch.zeros_like(x)]).float()  # patch row, patch column
        n = (height // 14) * (width // 14)
        rows = patchify(image).view(n, 3, 2, 14, 14)
        assert torch.equal(rows[:, :, 0], rows[:, :, 1])
        cells_w = width // 28
        cell, inner = torch.arange(n) // 4, torch.arange(n) % 4
        assert torch.equal(rows[:, 0, 0, 0, 0], (2 * (cell // cells_w) + inner // 2).float())
        assert torch.equal(rows[:, 1, 0, 0, 0], (2 * (cell % cells_w) + inner % 2).float())
    with pytest.raises(ValueError, match="multiple of 28"):
        patchify(torch.zeros(3, 28, 42))


def test_fast_pixels_of_a_paper_sized_image():
    """The worked example of `qwen2vl_fast_pixels`: 640x480 at 1024 cells -> 784 x 1036 pixels."""
    image = Image.new("RGB", (640, 480), (255, 0, 0))
    pixel_values, grid = qwen2vl_fast_pixels(image, 1024 * 784, 1024 * 784)
    assert grid.tolist() == [[1, 56, 74]] and pixel_values.shape == (4144, 1176)
