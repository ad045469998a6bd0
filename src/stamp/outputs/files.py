"""Result files of `stamp segment` / `stamp demo`: result.json, mask_<k>.png, overlay.png."""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from stamp.filemodes import new_dir_mode, new_file_mode  # noqa: F401  (re-exported)
from stamp.outputs.records import PALETTE, encode_rle, mask_record  # noqa: F401  (re-exported)

HALO = (0, 0, 0)
"""The colour of the line drawn just outside each mask (inside it, the edge is in the mask's colour): the
two-tone outline shows on any background, a mask's own colour included."""


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


def result_to_dict(result, files: bool = False) -> dict:
    """The JSON form of a StampResult: text, finish_reason, one mask record per mask
    (`stamp.outputs.records`), timings. `files`: each record's `file` is `mask_<k>.png` (written next to the
    JSON by `write_result`)."""
    return {
        "text": result.text,
        "finish_reason": getattr(result, "finish_reason", "eos"),
        "masks": [
            mask_record(m, k, result.text, f"mask_{k}.png" if files else None)
            for k, m in enumerate(result.masks)
        ],
        "timings": {k: round(v, 6) for k, v in result.timings.items()},
    }


def overlay_masks(image: Image.Image, masks: list[np.ndarray], alpha: float = 0.5) -> Image.Image:
    """Blend each mask in its palette colour over the image and outline it: its edge pixels in its
    colour, the pixels just outside them in `HALO`. The result has the image's size (the web page draws
    the same pixels)."""
    base = np.asarray(image.convert("RGB")).astype(np.float32)
    out = base.copy()
    halo = np.array(HALO, dtype=np.float32)
    for k, m in enumerate(masks):
        colour = np.array(PALETTE[k % len(PALETTE)], dtype=np.float32)
        out[m] = (1 - alpha) * out[m] + alpha * colour
        out[m & ~_erode(m)] = colour
        out[_dilate(m) & ~m] = halo
    return Image.fromarray(out.clip(0, 255).astype(np.uint8))


def add_legend(overlay: Image.Image, labels: list[str]) -> Image.Image:
    """`overlay` with a legend strip below it: one row per mask, its colour swatch and `labels[k]`
    (e.g. "0: the red circle"). Without labels, `overlay` unchanged."""
    if not labels:
        return overlay
    font = ImageFont.load_default()
    row, pad = 16, 4
    width = max(overlay.width, 160)
    out = Image.new("RGB", (width, overlay.height + pad + row * len(labels) + pad), (255, 255, 255))
    out.paste(overlay.convert("RGB"), (0, 0))
    draw = ImageDraw.Draw(out)
    for k, label in enumerate(labels):
        y = overlay.height + pad + k * row
        draw.rectangle([pad, y + 2, pad + 11, y + 13], fill=PALETTE[k % len(PALETTE)], outline=HALO)
        try:
            draw.text((pad + 18, y + 2), label, fill=(0, 0, 0), font=font)
        except UnicodeEncodeError:  # Pillow's bitmap font (no FreeType) knows Latin-1 only
            text = label.encode("latin-1", "replace").decode("latin-1")
            draw.text((pad + 18, y + 2), text, fill=(0, 0, 0), font=font)
    return out


def legend_labels(records: list[dict]) -> list[str]:
    """ "k: phrase" for each mask record (`mask_record`), "k" alone where the phrase is empty."""
    return [f"{r['index']}: {r['phrase']}" if r["phrase"] else str(r["index"]) for r in records]


def _erode(m: np.ndarray) -> np.ndarray:
    e = m.copy()
    e[1:] &= m[:-1]
    e[:-1] &= m[1:]
    e[:, 1:] &= m[:, :-1]
    e[:, :-1] &= m[:, 1:]
    return e


def _dilate(m: np.ndarray) -> np.ndarray:
    d = m.copy()
    d[1:] |= m[:-1]
    d[:-1] |= m[1:]
    d[:, 1:] |= m[:, :-1]
    d[:, :-1] |= m[:, 1:]
    return d


def _png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def result_paths(out_dir: Path, n_masks: int) -> list[Path]:
    """The files `write_result` writes into `out_dir` for a result with `n_masks` masks."""
    out_dir = Path(out_dir)
    return [out_dir / "result.json", out_dir / "overlay.png"] + [
        out_dir / f"mask_{k}.png" for k in range(n_masks)
    ]


def write_result(
    result, image: Image.Image, out_dir: Path, *, force: bool = False, extra: dict | None = None
) -> list[Path]:
    """Write result.json, mask_<k>.png (0/255) and overlay.png (outlined masks over the image, a legend
    of index and phrase per colour below it) into `out_dir`; returns the paths."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    paths = result_paths(out_dir, len(result.masks))
    ensure_writable(paths, force)
    out_dir.mkdir(parents=True, exist_ok=True)
    payload = {**(extra or {}), **result_to_dict(result, files=True)}
    for k, m in enumerate(result.masks):
        atomic_write_bytes(
            out_dir / f"mask_{k}.png", _png_bytes(Image.fromarray(m.mask.astype(np.uint8) * 255))
        )
    overlay = overlay_masks(image, [m.mask for m in result.masks])
    overlay = add_legend(overlay, legend_labels(payload["masks"]))
    atomic_write_bytes(out_dir / "overlay.png", _png_bytes(overlay))
    atomic_write_bytes(out_dir / "result.json", (json.dumps(payload, indent=2) + "\n").encode())
    return paths


def save_mask_png(mask: np.ndarray, path: Path) -> str:
    """Write a bool mask as a 0/255 PNG (atomically); returns the path as a string."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, _png_bytes(Image.fromarray(mask.astype(np.uint8) * 255)))
    return str(path)
