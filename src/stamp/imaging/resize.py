"""Qwen2-VL pixel patches exactly as transformers' fast image processor makes them, without torchvision.

The fast processor (`Qwen2VLImageProcessorFast` in transformers 4.x, `Qwen2VLImageProcessor` on the
torchvision backend in 5.x) turns one RGB image into patches in four steps, all on the CPU:

    1. the PIL image -> a uint8 tensor (3, H, W);
    2. resize to `smart_resize(H, W)` (multiples of 28) with torchvision's bicubic, antialiased resize.
       On a CPU uint8 tensor torchvision hands the uint8 tensor itself to
       `torch.nn.functional.interpolate(mode="bicubic", antialias=True, align_corners=False)`, whose
       native uint8 kernel rounds and clamps inside; the result stays uint8. An image already at the
       target size is left as it is;
    3. rescale and normalise in one step, in float32: (x - mean / r) / (std / r), with r = 1/255 and
       mean / r, std / r computed as float32 tensors;
    4. cut into 14x14 patches, each repeated twice in time (temporal patch 2), ordered so that the 2x2
       patches of one merged 28x28 cell are consecutive.

`qwen2vl_fast_pixels` runs the four steps; each step is a function of its own. Step 2 decides the
numbers: a float32 resize (what torchvision does on a GPU) and the PIL resize
(`Qwen2VLImageProcessorPil`) both differ from the uint8 kernel, so neither reproduces it
(tests/test_fast_resize.py compares against the real processor's output).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

PATCH = 14  # ViT patch side
MERGE = 2  # patches per merged cell side
TEMPORAL = 2  # frames per temporal patch (a still image is repeated)
RESCALE = 1 / 255


def pil_to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) uint8 from an RGB PIL image (other modes: convert first, e.g. `stamp.imaging.load_image`)."""
    if image.mode != "RGB":
        raise ValueError(f"expected an RGB image, got mode {image.mode}")
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1).contiguous()


def resize_bicubic_antialias(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize as torchvision's `resize(image, [height, width], BICUBIC, antialias=True)` does on the CPU.

    Args:
        image: (C, H, W) uint8.
        height, width: the output size.

    Returns:
        (C, height, width) uint8; `image` itself when it already has that size.

    Example: a (3, 57, 83) image to 56 x 84 rows and columns -> (3, 56, 84) uint8, equal to torchvision's
    output bit for bit (the uint8 kernel keeps its intermediate rows in uint8, so it is *not* the
    float32 resize rounded: that one differs by up to 15 levels on a noise image of this size).
    """
    if image.dtype != torch.uint8 or image.dim() != 3:
        raise ValueError(f"expected a (C, H, W) uint8 tensor, got {tuple(image.shape)} {image.dtype}")
    if tuple(image.shape[-2:]) == (height, width):
        return image
    out = F.interpolate(
        image.unsqueeze(0), size=(height, width), mode="bicubic", antialias=True, align_corners=False
    )
    return out[0]


def normalize(
    image: torch.Tensor,
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN,
    std: tuple[float, ...] = OPENAI_CLIP_STD,
    rescale_factor: float = RESCALE,
) -> torch.Tensor:
    """Rescale to [0, 1] and normalise per channel, fused as the fast processor fuses them.

    Args:
        image: (C, H, W) uint8 (or any real dtype holding 0..255 values).
        mean, std: C values each, for pixels in [0, 1].

    Returns:
        (C, H, W) float32 = (image - mean / rescale_factor) / (std / rescale_factor), where the scaled
        mean and std are float32 tensors (so the result can differ in the last bit from
        `(image * rescale_factor - mean) / std`).
    """
    scale = 1.0 / rescale_factor
    mean_t = (torch.tensor(mean, dtype=torch.float32) * scale).view(-1, 1, 1)  # (C, 1, 1)
    std_t = (torch.tensor(std, dtype=torch.float32) * scale).view(-1, 1, 1)
    return (image.to(torch.float32) - mean_t) / std_t


def patchify(
    image: torch.Tensor, patch: int = PATCH, merge: int = MERGE, temporal: int = TEMPORAL
) -> torch.Tensor:
    """Cut an image into flattened Qwen2-VL patches.

    Args:
        image: (C, H, W) with H and W multiples of patch * merge.

    Returns:
        (gh * gw, C * temporal * patch * patch) with gh = H / patch, gw = W / patch. Rows run over merged
        cells in raster order and, inside a cell, over its merge x merge patches in raster order; each row
        holds channel-major (C, temporal, patch, patch) values, the image repeated `temporal` times.

    Example: a (3, 28, 56) image -> (8, 1176): rows 0-3 are the 2x2 patches of the left cell (top-left,
    top-right, bottom-left, bottom-right), rows 4-7 those of the right cell.
    """
    c, h, w = image.shape
    gh, gw = h // patch, w // patch
    if gh * patch != h or gw * patch != w or gh % merge or gw % merge:
        raise ValueError(f"image {h}x{w} is not a multiple of {patch * merge} on both sides")
    x = image.reshape(c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(1, 4, 2, 5, 0, 3, 6)  # (gh/m, gw/m, m, m, C, p, p)
    x = x.unsqueeze(5).expand(-1, -1, -1, -1, -1, temporal, -1, -1)  # (gh/m, gw/m, m, m, C, T, p, p)
    return x.reshape(gh * gw, c * temporal * patch * patch)


MAX_ASPECT = 200
"""The backbone's limit on an image's long / short side ratio (transformers' `smart_resize` refuses more)."""


def pad_to_aspect(image: Image.Image, max_ratio: int = MAX_ASPECT) -> Image.Image:
    """`image` itself when its long / short side ratio is at most `max_ratio`; else a copy whose short
    side is extended (at the bottom or the right, repeating the last row or column) to
    ceil(long / max_ratio) pixels, so that the backbone takes it. The original is the top-left corner:
    cropping a mask of the padded image to the original size aligns it with the original.

    Example: a 416 x 1 (width x height) image -> 416 x 3, its one row three times.
    """
    width, height = image.size
    long, short = max(width, height), min(width, height)
    if long <= max_ratio * short:
        return image
    need = -(-long // max_ratio)
    pad = ((0, need - height), (0, 0)) if height < width else ((0, 0), (0, need - width))
    arr = np.asarray(image)
    return Image.fromarray(np.pad(arr, pad + ((0, 0),) * (arr.ndim - 2), mode="edge"))


def qwen2vl_fast_pixels(
    image: Image.Image,
    min_pixels: int,
    max_pixels: int,
    mean: tuple[float, ...] = OPENAI_CLIP_MEAN,
    std: tuple[float, ...] = OPENAI_CLIP_STD,
) -> tuple[torch.Tensor, torch.Tensor]:
    """An RGB image -> (pixel_values, image_grid_thw) as the fast Qwen2-VL image processor returns them.

    Returns:
        pixel_values: (gh * gw, 3 * 2 * 14 * 14) float32, see `patchify`;
        image_grid_thw: (1, 3) long = [[1, gh, gw]] in 14-pixel patches.

    Example: a 640x480 (width x height) image with min = max = 1024 * 28 * 28 pixels is resized to
    height 784, width 1036 (28 x 37 = 1036 cells of 28x28), so pixel_values is (56 * 74, 1176) =
    (4144, 1176) and image_grid_thw [[1, 56, 74]].
    """
    x = pil_to_tensor(image)  # (3, H, W) uint8
    height, width = smart_resize(
        x.shape[1], x.shape[2], factor=PATCH * MERGE, min_pixels=min_pixels, max_pixels=max_pixels
    )
    x = normalize(resize_bicubic_antialias(x, height, width), mean, std)  # (3, height, width) float32
    grid = torch.tensor([[1, height // PATCH, width // PATCH]], dtype=torch.long)
    return patchify(x), grid


__all__ = [
    "MAX_ASPECT",
    "normalize",
    "pad_to_aspect",
    "patchify",
    "pil_to_tensor",
    "qwen2vl_fast_pixels",
    "resize_bicubic_antialias",
]
