"""COCO-style `instances.json` reading and annotation-to-mask decoding (shared by refer and gRefCOCO)."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from stamp.data.errors import DataError


def read_json(path: str | Path, what: str = "annotation file") -> Any:
    """Parse a JSON file, raising `DataError` (naming the path) when it is missing or not JSON."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"corrupt {what} {path}: {exc}") from None


@dataclass
class CocoInstances:
    """The images, annotations and categories of an `instances.json`, indexed by id."""

    path: Path
    images: dict[int, dict]
    anns: dict[int, dict]
    categories: dict[int, dict]

    @classmethod
    def load(cls, path: str | Path) -> CocoInstances:
        """Read and index `path`; `DataError` if a required key is missing."""
        path = Path(path)
        data = read_json(path, "instances file")
        try:
            images = {
                int(im["id"]): _require(im, ("file_name", "height", "width"), path) for im in data["images"]
            }
            anns = {
                int(a["id"]): _require(a, ("image_id", "segmentation"), path) for a in data["annotations"]
            }
            cats = {int(c["id"]): c for c in data.get("categories", [])}
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise DataError(f"corrupt instances file {path}: missing or bad field {exc}") from None
        return cls(path, images, anns, cats)

    def image_size(self, image_id: int) -> tuple[int, int]:
        """(height, width) of an image."""
        im = self.images[image_id]
        return int(im["height"]), int(im["width"])

    def mask(self, ann_id: int) -> np.ndarray:
        """The 0/1 uint8 HxW mask of one annotation (at its image's size)."""
        ann = self.anns[ann_id]
        h, w = self.image_size(int(ann["image_id"]))
        try:
            return segmentation_to_mask(ann["segmentation"], h, w)
        except (TypeError, ValueError, KeyError) as exc:
            raise DataError(f"corrupt segmentation of annotation {ann_id} in {self.path}: {exc}") from None

    def union_mask(self, ann_ids: list[int], image_id: int, skip_crowd: bool = True) -> np.ndarray:
        """Union of the listed annotations' masks (crowd regions skipped), zeros if none."""
        h, w = self.image_size(image_id)
        out = np.zeros((h, w), dtype=np.uint8)
        for ann_id in ann_ids:
            if skip_crowd and self.anns[ann_id].get("iscrowd", 0):
                continue
            out |= self.mask(ann_id)
        return out


def _require(entry: dict, keys: tuple[str, ...], path: Path) -> dict:
    missing = [k for k in keys if k not in entry]
    if missing:
        raise DataError(f"corrupt instances file {path}: entry {entry.get('id')} lacks {', '.join(missing)}")
    return entry


def segmentation_to_mask(segm: list | dict, h: int, w: int) -> np.ndarray:
    """Decode a COCO segmentation (list of polygons, uncompressed RLE or compressed RLE) to 0/1 uint8."""
    if isinstance(segm, list):  # polygons [[x0, y0, x1, y1, ...], ...]
        polys = [p for p in segm if len(p) >= 6]
        if not polys:
            return np.zeros((h, w), dtype=np.uint8)
        rle = mask_utils.merge(mask_utils.frPyObjects(polys, h, w))
    elif isinstance(segm, dict) and isinstance(segm.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(segm, h, w)
    elif isinstance(segm, dict):  # compressed RLE (counts as str or bytes)
        rle = segm
    else:
        raise ValueError(f"unknown segmentation type {type(segm).__name__}")
    with warnings.catch_warnings():  # pycocotools' own numpy-2 copy-keyword deprecation notice
        warnings.simplefilter("ignore", DeprecationWarning)
        mask = mask_utils.decode(rle)
    if mask.shape[:2] != (h, w):
        raise ValueError(f"RLE size {mask.shape[:2]} differs from the image size {(h, w)}")
    return (mask.reshape(h, w) > 0).astype(np.uint8)


def mask_to_rle(mask: np.ndarray) -> dict:
    """Compressed COCO RLE of a 0/1 mask, JSON-ready (`counts` as str)."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
