"""Backgrounds and painting for SynthRef scenes: flat, gradient, blotchy noise, checker/stripes.

Backgrounds are low-saturation mid-tones so every object colour, white and black included, stands out.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

BACKGROUNDS: tuple[str, ...] = ("flat", "gradient", "noise", "texture")


def _muted(rng: np.random.Generator) -> np.ndarray:
    """A low-saturation mid-tone colour, so every object colour (white and black included) stands out."""
    grey = rng.uniform(85, 175)
    return np.clip(grey + rng.uniform(-18, 18, size=3), 0, 255).astype(np.float32)


def draw_background(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, str]:
    """An HxWx3 uint8 background of a random style (flat, gradient, blotchy noise, checker/stripes)."""
    style = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    a, b = _muted(rng), _muted(rng)
    if style == "flat":
        out = np.empty((h, w, 3), dtype=np.uint8)
        out[:] = a.astype(np.uint8)
        return out, style
    if style == "gradient":
        th = rng.uniform(0, 2 * np.pi)
        u = (
            np.cos(th) * np.arange(w, dtype=np.float32)[None, :]
            + np.sin(th) * np.arange(h, dtype=np.float32)[:, None]
        )
        u -= u.min()
        level = (u * (255.0 / max(float(u.max()), 1e-6))).astype(np.uint8)
        ramp = a + np.linspace(0, 1, 256, dtype=np.float32)[:, None] * (b - a)
        return _apply_palette(level, ramp), style
    if style == "noise":
        cell = int(rng.integers(2, 9))
        coarse = rng.normal(0, 14, size=(h // cell + 1, w // cell + 1, 3)).astype(np.float32)
        coarse = np.clip(a + coarse, 0, 255).astype(np.uint8)
        return np.repeat(np.repeat(coarse, cell, 0), cell, 1)[:h, :w], style
    period = int(rng.integers(8, 40))
    ys, xs = np.arange(h, dtype=np.int32)[:, None], np.arange(w, dtype=np.int32)[None, :]
    if rng.random() < 0.5:  # checkerboard
        sel = (ys // period + xs // period) % 2
    else:  # stripes in one of four directions
        dx, dy = [(1, 0), (0, 1), (1, 1), (1, -1)][int(rng.integers(4))]
        sel = ((xs * dx + ys * dy + h) // period) % 2
    b = np.clip(a + np.clip(b - a, -30, 30) + 12, 0, 255)  # keep the texture faint
    return _apply_palette(sel.astype(np.uint8), np.stack([a, b])), style


def _apply_palette(index: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """Map an HxW uint8 index array through up to 256 RGB colours (fast, via a PIL palette image)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[: len(colours)] = np.clip(colours, 0, 255).astype(np.uint8)
    im = Image.fromarray(index, mode="L")
    im.putpalette(palette.tobytes())  # turns the image into mode "P"
    return np.asarray(im.convert("RGB"))


def paint_objects(
    rng: np.random.Generator,
    background: np.ndarray,
    instance_map: np.ndarray,
    colours: list[tuple[int, int, int]],
) -> np.ndarray:
    """Paint every pixel of object k (instance map value k + 1) in colours[k], jittered by up to 10
    per channel per object, over the HxWx3 uint8 background."""
    palette = np.zeros((len(colours) + 1, 3), dtype=np.int64)
    for k, rgb in enumerate(colours):
        palette[k + 1] = np.array(rgb) + rng.integers(-10, 11, size=3)
    objects = Image.fromarray(_apply_palette(instance_map, palette))
    fg = Image.fromarray(instance_map, mode="L").point(lambda v: 255 if v else 0)
    return np.asarray(Image.composite(objects, Image.fromarray(background), fg))
