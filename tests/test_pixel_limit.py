"""One image size limit (`PredictorOptions.max_image_pixels`, 25 megapixels by default) for the Python
API, the CLI (--max-image-pixels) and the server (413, tests/serve/test_serve_errors.py): a file is
refused from its header, before decoding, in one line."""

import struct
import zlib

import numpy as np
import pytest
from helpers import random_image
from PIL import Image

from stamp.cli import main
from stamp.imaging import DEFAULT_MAX_IMAGE_PIXELS, ImageTooLargeError, load_image
from stamp.inference import PredictorOptions, StampPredictor


def png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height pixels and holds none: decoding it would fail."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def test_the_limit_is_one_option_checked_before_decoding(tmp_path, tiny_model, tiny_processor):
    big = tmp_path / "big.png"
    big.write_bytes(png_header(10_000, 10_000))  # 100 MP, as the 10,000 x 10,000 photo
    assert PredictorOptions().max_image_pixels == DEFAULT_MAX_IMAGE_PIXELS == 25_000_000
    with pytest.raises(ImageTooLargeError, match=r"10000x10000 = 100000000 pixels; the limit is 25000000"):
        load_image(big)  # from the header: the file has no pixel data to decode
    pred = StampPredictor(tiny_model, tiny_processor, max_image_pixels=5_000)
    for image in (random_image(100, 60), np.zeros((100, 60, 3), np.uint8), big):
        with pytest.raises(ImageTooLargeError, match="the limit is 5000 pixels"):
            pred.set_image(image)
    pred.set_image(random_image(50, 100))  # exactly the limit
    with pytest.raises(ValueError, match="max_image_pixels"):
        PredictorOptions(max_image_pixels=0)
    with pytest.raises(ValueError, match="max_image_pixels"):
        PredictorOptions(max_image_pixels=10**12)  # over Pillow's decompression-bomb guard


def test_the_cli_refuses_in_one_line(tmp_path, capsys):
    big = tmp_path / "big.png"
    big.write_bytes(png_header(10_000, 10_000))
    small = tmp_path / "small.png"
    random_image(60, 80).save(small)
    code = main(["segment", str(big), "--prompt", "x", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "the limit is 25000000 pixels" in err
    assert len([ln for ln in err.splitlines() if "error" in ln]) == 1, err
    argv = ["segment", str(small), "--prompt", "x", "--max-new-tokens", "1", "--out", str(tmp_path / "p")]
    assert main(argv + ["--max-image-pixels", "4000"]) == 2
    assert "the limit is 4000 pixels" in capsys.readouterr().err
    assert main(argv + ["--max-image-pixels", "4800"]) == 0
    assert Image.open(tmp_path / "p" / "overlay.png").width == 80


def test_a_large_overlay_is_memory_bounded_and_readable():
    """No float copies of the whole image (a float32 image is 12 bytes a pixel; the overlay stays near
    the 3 of its uint8 copy), and outlines and legend grow with the image."""
    import tracemalloc

    from stamp.outputs.files import add_legend, display_scale, overlay_masks

    h, w = 3000, 4000
    image = Image.new("RGB", (w, h), (40, 80, 120))
    masks = [np.zeros((h, w), bool), np.zeros((h, w), bool)]
    masks[0][500:2500, 500:3500] = True
    masks[1][:, :2000] = True
    tracemalloc.start()
    try:
        overlay = overlay_masks(image, masks)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 10 * h * w, peak  # the old float32 blend held 2 x 12 bytes a pixel (288 MB here)
    scale = display_scale(w, h)
    assert scale == 5
    px = np.asarray(overlay)
    outline = (px[1500, 3500 : 3500 + scale] == 0).all(-1)  # the halo right of mask 0: black
    assert outline.all() and (px[1500, 3500 + scale] != 0).any()  # scale pixels wide
    legend = add_legend(overlay, [(0, "0: a"), (1, "1: b")])
    assert legend.width == w and legend.height - h == (4 + 16 * 2 + 4) * scale
    small = random_image(90, 120)
    assert display_scale(*small.size) == 1
    assert add_legend(small, [(0, "0: a")]).size == (160, 90 + 24)
