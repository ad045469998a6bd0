"""Images in: loading any image a user hands over (`load`), and the backbone's resize (`resize`)."""

from stamp.imaging.load import ImageError, ImageLike, load_image

__all__ = ["ImageError", "ImageLike", "load_image"]
