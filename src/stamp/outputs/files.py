"""Result files of `stamp segment` / `stamp demo`: result.json, mask_<k>.png, overlay.png.

A result folder is written whole or not at all (`staged_dir`): its files go into a temporary folder
beside it, which is renamed into place once complete; with `force` an earlier result there is replaced
only then, so a failure leaves the earlier files as they were and no partial ones."""

from __future__ import annotations

import io
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from stamp.faults import WriteError, describe, is_fault
from stamp.filemodes import new_dir_mode, new_file_mode  # noqa: F401  (re-exported)
from stamp.outputs.jsondoc import dumps, json_ready  # noqa: F401  (re-exported)
from stamp.outputs.records import PALETTE, encode_rle, mask_record, result_timings  # noqa: F401

HALO = (0, 0, 0)
"""The colour of the line drawn just outside each mask (inside it, the edge is in the mask's colour): the
two-tone outline shows on any background, a mask's own colour included."""


def write_file(path: Path, data: bytes) -> None:
    """Write `data` as the new file `path`, in the user's file mode: every file of a result goes through
    here (the one place a full disk shows up, and where the tests inject one)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, new_file_mode())
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, then rename: readers never see a partial file. A fault
    of the machine (full disk, ...) is a `WriteError` saying the earlier file, if any, is untouched."""
    path = Path(path)
    existed = path.exists()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.partial")
    try:
        write_file(tmp, data)
        os.replace(tmp, path)
    except BaseException as err:
        tmp.unlink(missing_ok=True)
        if is_fault(err):
            kept = f"the earlier {path.name} is untouched" if existed else "nothing was written"
            raise WriteError(f"{describe(err)} while writing {path}; {kept}", err) from None
        raise


def write_json(path: str | Path, doc, indent: int | None = 2) -> Path:
    """Write `doc` as strict JSON (`stamp.outputs.jsondoc`: NaN/inf as null) to `path`, atomically and
    ending in a newline; returns the path. Every JSON document STAMP writes goes through here."""
    path = Path(path)
    atomic_write_bytes(path, (dumps(doc, indent=indent) + "\n").encode())
    return path


RESULT_FILE = re.compile(r"^(?:result\.json|overlay\.png|mask_\d+\.png)$")
"""The files `write_result` writes: a folder holding only these is a result folder `--force` replaces."""


def check_result_dir(path: Path, force: bool) -> None:
    """Refuse (FileExistsError) to write a result folder at `path` where one exists unless `force`, and
    even with it where `path` is a file or holds anything but a result's files: `--force` replaces a
    result, never files STAMP did not write. An empty folder is taken as it is."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileExistsError(f"{path} exists and is not a directory")
    if not path.is_dir():
        return
    entries = sorted(p.name for p in path.iterdir())
    others = [n for n in entries if not RESULT_FILE.match(n)]
    if others:
        raise FileExistsError(
            f"{path} holds files that are not a result of stamp ({others[0]}); name a new or empty folder"
        )
    if entries and not force:
        raise FileExistsError(f"{path / entries[0]} already exists; use --force to overwrite")


@contextmanager
def staged_dir(target: Path, force: bool = False) -> Iterator[Path]:
    """A fresh temporary folder beside `target` to write a whole result into; on leaving the block it is
    renamed to `target` (an earlier folder there -- see `check_result_dir` -- replaced only now, once the
    new one is complete). On an error the temporary folder is removed and `target` left as it was."""
    target = Path(target)
    check_result_dir(target, force)
    existed = target.is_dir() and any(target.iterdir())
    tmp = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
        os.chmod(tmp, new_dir_mode())
        yield tmp
        check_result_dir(target, force)  # the same check, for a folder that appeared meanwhile
        replace_dir(tmp, target)
    except BaseException as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if is_fault(err):
            kept = "; the earlier result is untouched" if existed else ""
            raise WriteError(
                f"{describe(err)} while writing {target}/; nothing was written there{kept}", err
            ) from None
        raise


def replace_dir(new: Path, target: Path) -> None:
    """Rename folder `new` to `target`; an existing `target` is moved aside first, restored if the
    rename fails, and deleted after it succeeded."""
    new, target = Path(new), Path(target)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.rmdir(old)
        os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        if old is not None:
            os.rename(old, target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def ensure_writable(paths: list[Path], force: bool) -> None:
    """Refuse (FileExistsError, naming the file) to overwrite any existing output unless `force`."""
    if force:
        return
    for p in paths:
        if p.exists():
            raise FileExistsError(f"{p} already exists; use --force to overwrite")


def result_to_dict(result, files: bool = False, prompt: str | None = None) -> dict:
    """The JSON form of a StampResult (`StampResult.to_dict()`), the same dict result.json and the HTTP
    API hold: prompt, text, finish_reason, one mask record per mask (`stamp.outputs.records`), timings
    (this answer's) and batch (the batch it shared passes with: `records.result_timings`). `files`:
    each record's `file` is `mask_<k>.png` (written next to the JSON by `write_result`). `prompt`: the
    request, where the result does not know it (`StampResult.prompt` None)."""
    prompt = getattr(result, "prompt", None) or prompt
    timings, batch = result_timings(result.timings, getattr(result, "batch_size", 1))
    return {
        "prompt": prompt,
        "text": result.text,
        "finish_reason": getattr(result, "finish_reason", "eos"),
        "masks": [
            mask_record(m, k, result.text, f"mask_{k}.png" if files else None, prompt)
            for k, m in enumerate(result.masks)
        ],
        "timings": timings,
        "batch": batch,
    }


OVERLAY_BAND = 512
"""Rows blended at a time: the overlay's float work is bounded by a band, whatever the image's size."""


def display_scale(width: int, height: int) -> int:
    """How many times thicker than at ordinary sizes an overlay's outlines and legend are drawn, so that
    they stay readable when a large image is viewed whole: 1 up to 1600 pixels on the long side, then
    one more per 800 (a 10,000-pixel image: 12)."""
    return max(1, max(width, height) // 800)


def overlay_masks(image: Image.Image, masks: list[np.ndarray], alpha: float = 0.5) -> Image.Image:
    """Blend each mask in its palette colour over the image and outline it: its edge pixels in its
    colour, the pixels just outside them in `HALO`, each line `display_scale` pixels wide. The result
    has the image's size (the web page draws the same pixels). Memory: one uint8 copy of the image, a
    few bool maps, and float32 work on `OVERLAY_BAND` rows at a time."""
    out = np.array(image.convert("RGB"), dtype=np.uint8)
    width = display_scale(out.shape[1], out.shape[0])
    halo = np.array(HALO, dtype=np.uint8)
    for k, m in enumerate(masks):
        colour = np.array(PALETTE[k % len(PALETTE)], dtype=np.float32)
        for y in range(0, out.shape[0], OVERLAY_BAND):
            band, inside = out[y : y + OVERLAY_BAND], m[y : y + OVERLAY_BAND]
            blend = (1 - alpha) * band[inside].astype(np.float32) + alpha * colour
            band[inside] = blend.clip(0, 255).astype(np.uint8)
        out[m & ~_erode(m, width)] = colour.astype(np.uint8)
        out[_dilate(m, width) & ~m] = halo
    return Image.fromarray(out)


def add_legend(overlay: Image.Image, labels: list[tuple[int, str]]) -> Image.Image:
    """`overlay` with a legend strip below it: one row per (index, label), the colour swatch of mask
    `index` and the label (e.g. "0: the red circle"). Without labels, `overlay` unchanged. The strip is
    drawn at `display_scale` times its ordinary size, so it stays readable beside a large image."""
    if not labels:
        return overlay
    font = ImageFont.load_default()
    scale = display_scale(*overlay.size)
    row, pad = 16, 4
    width = max(-(-overlay.width // scale), 160)
    strip = Image.new("RGB", (width, pad + row * len(labels) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    for row_k, (index, label) in enumerate(labels):
        y = pad + row_k * row
        draw.rectangle([pad, y + 2, pad + 11, y + 13], fill=PALETTE[index % len(PALETTE)], outline=HALO)
        try:
            draw.text((pad + 18, y + 2), label, fill=(0, 0, 0), font=font)
        except UnicodeEncodeError:  # Pillow's bitmap font (no FreeType) knows Latin-1 only
            text = label.encode("latin-1", "replace").decode("latin-1")
            draw.text((pad + 18, y + 2), text, fill=(0, 0, 0), font=font)
    if scale > 1:
        strip = strip.resize((strip.width * scale, strip.height * scale), Image.Resampling.NEAREST)
    out = Image.new("RGB", (max(overlay.width, strip.width), overlay.height + strip.height), (255, 255, 255))
    out.paste(overlay.convert("RGB"), (0, 0))
    out.paste(strip, (0, overlay.height))
    return out


def legend_labels(records: list[dict]) -> list[tuple[int, str]]:
    """(index, "k: phrase") for each mask record (`mask_record`) with pixels, "k" alone where the phrase
    is empty. An empty mask is drawn nowhere, so it gets no swatch: a colour that marks nothing."""
    return [
        (r["index"], f"{r['index']}: {r['phrase']}" if r["phrase"] else str(r["index"]))
        for r in records
        if r["area"] > 0
    ]


def _erode(m: np.ndarray, times: int = 1) -> np.ndarray:
    for _ in range(times):
        e = m.copy()
        e[1:] &= m[:-1]
        e[:-1] &= m[1:]
        e[:, 1:] &= m[:, :-1]
        e[:, :-1] &= m[:, 1:]
        m = e
    return m


def _dilate(m: np.ndarray, times: int = 1) -> np.ndarray:
    for _ in range(times):
        d = m.copy()
        d[1:] |= m[:-1]
        d[:-1] |= m[1:]
        d[:, 1:] |= m[:, :-1]
        d[:, :-1] |= m[:, 1:]
        m = d
    return m


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
    """Write the result folder `out_dir`: result.json (`extra`, then `result_to_dict`), mask_<k>.png
    (0/255) and overlay.png (outlined masks over the image, a legend of index and phrase per colour
    below it); returns the paths. Whole or not at all (`staged_dir`): with `force` an earlier result in
    `out_dir`, stale mask files included, is replaced once the new one is complete."""
    out_dir = Path(out_dir)
    extra = extra or {}
    payload = {**extra, **result_to_dict(result, files=True, prompt=extra.get("prompt"))}
    overlay = overlay_masks(image, [m.mask for m in result.masks])
    overlay = add_legend(overlay, legend_labels(payload["masks"]))
    with staged_dir(out_dir, force) as tmp:
        for k, m in enumerate(result.masks):
            write_file(tmp / f"mask_{k}.png", _png_bytes(Image.fromarray(m.mask.astype(np.uint8) * 255)))
        write_file(tmp / "overlay.png", _png_bytes(overlay))
        write_file(tmp / "result.json", (dumps(payload, indent=2) + "\n").encode())
    return result_paths(out_dir, len(result.masks))


def save_mask_png(mask: np.ndarray, path: Path) -> str:
    """Write a bool mask as a 0/255 PNG (atomically); returns the path as a string."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, _png_bytes(Image.fromarray(mask.astype(np.uint8) * 255)))
    return str(path)
