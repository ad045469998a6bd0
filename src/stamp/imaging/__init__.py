"""Images in: loading any image a user hands over (`load`), and the backbone's resize (`resize`)."""

from stamp.imaging.load import (
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageError,
    ImageLike,
    ImageTooLargeError,
    image_file_size,
    load_image,
)

__all__ = [
    "DEFAULT_MAX_IMAGE_PIXELS",
    "ImageError",
    "ImageLike",
    "ImageTooLargeError",
    "image_file_size",
    "load_image",
]
