"""Image loading that accepts what users have: paths, PIL images of any mode, numpy arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

ImageLike = str | Path | Image.Image | np.ndarray

# Refuse decompression bombs: 100 megapixels is far beyond what the model ever looks at. Pillow's own
# guard, for every image opened in the process; the hard ceiling of `max_pixels` below.
MAX_IMAGE_PIXELS = 100_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

DEFAULT_MAX_IMAGE_PIXELS = 25_000_000
"""The one limit on an image's size (width x height) that the Python API (`PredictorOptions.
max_image_pixels`), the CLI (--max-image-pixels) and the server (413 `too_many_pixels`) share: 25
megapixels, far beyond the ~1 megapixel the model looks at. A file is checked from its header, before
any pixel is decoded. At most `MAX_IMAGE_PIXELS`."""


class ImageError(ValueError):
    """An input that is not a usable image (missing file, unreadable, wrong array shape)."""


class ImageTooLargeError(ImageError):
    """An image of more pixels than the limit (`DEFAULT_MAX_IMAGE_PIXELS` unless configured)."""


def check_max_pixels(value: int) -> int:
    """`value` if it is a usable pixel limit (1 .. `MAX_IMAGE_PIXELS`), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_IMAGE_PIXELS:
        raise ValueError(f"max_image_pixels must be an integer in [1, {MAX_IMAGE_PIXELS}], got {value!r}")
    return value


def check_pixels(size: tuple[int, int], max_pixels: int, what: str = "the image") -> None:
    """`ImageTooLargeError` (one line) when a (width, height) `size` has more than `max_pixels` pixels."""
    width, height = size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{what} is {width}x{height} = {width * height} pixels; the limit is {max_pixels} pixels "
            "(max_image_pixels, CLI --max-image-pixels)"
        )


def image_file_size(path: str | Path, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """(width, height) of an image file from its header alone, nothing decoded; `ImageError` for a
    missing file or one that is not an image, `ImageTooLargeError` above `max_pixels`."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(f"image file not found: {path}")
    try:
        with Image.open(path) as im:
            size = im.size
    except UnidentifiedImageError:
        raise ImageError(f"not an image file (cannot identify format): {path}") from None
    except Image.DecompressionBombError:
        raise ImageTooLargeError(f"image too large (over {MAX_IMAGE_PIXELS} pixels): {path}") from None
    except OSError as exc:
        raise ImageError(f"cannot read image {path}: {exc}") from None
    check_pixels(size, max_pixels, f"image {path}")
    return size


def load_image(image: ImageLike, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Return `image` as an RGB PIL image with its EXIF orientation applied.

    Args:
        image: a file path; a PIL image of any mode (alpha is composited on white, palette/16-bit/float
            converted); or a numpy array HxW (grey) / HxWx3 (RGB) / HxWx4 (RGBA), uint8 or float in [0, 1].
        max_pixels: the most pixels (width x height) accepted (`ImageTooLargeError` above; a file is
            checked from its header, before decoding).
    """
    if isinstance(image, (str, Path)):
        path = Path(image)
        image_file_size(path, max_pixels)
        try:
            with Image.open(path) as im:
                im.load()
                pil = ImageOps.exif_transpose(im)
        except UnidentifiedImageError:
            raise ImageError(f"not an image file (cannot identify format): {path}") from None
        except Image.DecompressionBombError:
            raise ImageTooLargeError(f"image too large (over {MAX_IMAGE_PIXELS} pixels): {path}") from None
        except OSError as exc:
            raise ImageError(f"cannot read image {path}: {exc}") from None
        return _to_rgb(pil)
    if isinstance(image, Image.Image):
        check_pixels(image.size, max_pixels)
        return _to_rgb(ImageOps.exif_transpose(image))
    if isinstance(image, np.ndarray):
        if image.ndim >= 2:
            check_pixels((image.shape[1], image.shape[0]), max_pixels)
        return _to_rgb(_array_to_pil(image))
    raise ImageError(
        f"unsupported image type {type(image).__name__}; give a path, a PIL image or a numpy array"
    )


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    if arr.ndim == 3 and arr.shape[2] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (3, 4)):
        raise ImageError(f"image array must be HxW, HxWx3 or HxWx4, got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise ImageError("image array is empty")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating):
            arr = np.clip(np.nan_to_num(arr), 0.0, 1.0) * 255.0 + 0.5
        elif arr.dtype == bool:
            arr = arr.astype(np.uint8) * np.uint8(255)
        elif np.issubdtype(arr.dtype, np.integer):
            hi = int(arr.max())
            arr = np.clip(arr, 0, None).astype(np.float64) * (255.0 / hi if hi > 255 else 1.0)
        else:
            raise ImageError(f"unsupported image array dtype {arr.dtype}")
        arr = arr.astype(np.uint8)
    return Image.fromarray(arr)


def _to_rgb(im: Image.Image) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        return Image.fromarray((scaled * 255.0 + 0.5).astype(np.uint8)).convert("RGB")
    return im.convert("RGB")
