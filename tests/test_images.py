import numpy as np
import pytest
from PIL import Image

from stamp.imaging import ImageError, load_image


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "I;16", "F", "CMYK", "1"])
def test_any_pil_mode_becomes_rgb(mode):
    im = Image.new("RGB", (20, 10), (10, 200, 30)).convert(mode)
    out = load_image(im)
    assert out.mode == "RGB" and out.size == (20, 10)


def test_arrays():
    assert load_image(np.zeros((5, 7), np.uint8)).size == (7, 5)
    assert load_image(np.ones((5, 7, 3), np.float32)).getpixel((0, 0)) == (255, 255, 255)
    assert load_image(np.zeros((5, 7, 4), np.uint8)).mode == "RGB"
    with pytest.raises(ImageError, match="shape"):
        load_image(np.zeros((5, 7, 2), np.uint8))


def test_exif_orientation_applied(tmp_path):
    im = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rot.jpg"
    im.save(path, exif=exif.tobytes())
    assert load_image(path).size == (20, 40)


def test_bad_inputs(tmp_path):
    with pytest.raises(ImageError, match="not found"):
        load_image(tmp_path / "x.png")
    (tmp_path / "t.png").write_text("hello")
    with pytest.raises(ImageError, match="not an image"):
        load_image(tmp_path / "t.png")
    with pytest.raises(ImageError, match="unsupported"):
        load_image(3)


def test_processor_refuses_every_control_token(tiny_model, tiny_processor):
    proc = tiny_processor
    for tok in ("<|seg|>", "<|mask|>", "<|image_pad|>", "<|vision_start|>", "<|im_start|>"):
        with pytest.raises(ValueError, match="reserved"):
            proc.check_user_text(f"segment {tok} now")
    ids = proc._text_ids("a <|vision_start|>b <|seg|>c")
    assert proc.decode(ids) == "a b <|seg|>c"
