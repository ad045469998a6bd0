"""Result files of `stamp segment` / `stamp demo`: result.json, mask_<k>.png, overlay.png."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from stamp.io.modes import new_dir_mode, new_file_mode  # noqa: F401  (re-exported)

# Distinct, colour-blind friendly colours (Okabe-Ito), one per mask in order.
PALETTE = [
    (230, 159, 0),
    (86, 180, 233),
    (0, 158, 115),
    (240, 228, 66),
    (0, 114, 178),
    (213, 94, 0),
    (204, 121, 167),
]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: readers never see a partial file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ensure_writable(paths: list[Path], force: bool) -> None:
    """Refuse (FileExistsError, naming the file) to overwrite any existing output unless `force`."""
    if force:
        return
    for p in paths:
        if p.exists():
            raise FileExistsError(f"{p} already exists; use --force to overwrite")


def encode_rle(mask: np.ndarray) -> dict:
    """COCO RLE of a bool HxW mask, with `counts` as a str (JSON-serialisable)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def result_to_dict(result) -> dict:
    """The JSON form of a StampResult: text, one entry per mask (area, bbox, rle, score), timings."""
    return {
        "text": result.text,
        "masks": [
            {
                "index": k,
                "area": m.area,
                "bbox": m.bbox,
                "score": round(m.score, 6),
                "grid": list(m.patch_logits.shape),
                "rle": encode_rle(m.mask),
            }
            for k, m in enumerate(result.masks)
        ],
        "timings": {k: round(v, 6) for k, v in result.timings.items()},
    }


def overlay_masks(image: Image.Image, masks: list[np.ndarray], alpha: float = 0.5) -> Image.Image:
    """Blend each mask in its palette colour over the image and outline it."""
    base = np.asarray(image.convert("RGB")).astype(np.float32)
    out = base.copy()
    for k, m in enumerate(masks):
        colour = np.array(PALETTE[k % len(PALETTE)], dtype=np.float32)
        out[m] = (1 - alpha) * out[m] + alpha * colour
        edge = m & ~_erode(m)
        out[edge] = colour
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def _erode(m: np.ndarray) -> np.ndarray:
    e = m.copy()
    e[1:] &= m[:-1]
    e[:-1] &= m[1:]
    e[:, 1:] &= m[:, :-1]
    e[:, :-1] &= m[:, 1:]
    return e


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def write_result(
    result, image: Image.Image, out_dir: Path, *, force: bool = False, extra: dict | None = None
) -> list[Path]:
    """Write result.json, mask_<k>.png (0/255) and overlay.png into `out_dir`; returns the paths."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    paths = [out_dir / "result.json", out_dir / "overlay.png"] + [
        out_dir / f"mask_{k}.png" for k in range(len(result.masks))
    ]
    ensure_writable(paths, force)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {**(extra or {}), **result_to_dict(result)}
    for k, m in enumerate(result.masks):
        payload["masks"][k]["file"] = f"mask_{k}.png"
        atomic_write_bytes(
            out_dir / f"mask_{k}.png", _png_bytes(Image.fromarray(m.mask.astype(np.uint8) * 255))
        )
    atomic_write_bytes(
        out_dir / "overlay.png", _png_bytes(overlay_masks(image, [m.mask for m in result.masks]))
    )
    atomic_write_bytes(out_dir / "result.json", (json.dumps(payload, indent=2) + "\n").encode())
    return paths


def save_mask_png(mask: np.ndarray, path: Path) -> str:
    """Write a bool mask as a 0/255 PNG (atomically); returns the path as a string."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, _png_bytes(Image.fromarray(mask.astype(np.uint8) * 255)))
    return str(path)
