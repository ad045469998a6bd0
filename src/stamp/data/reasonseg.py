"""ReasonSeg: reasoning segmentation queries.

    <root>/<split>/<name>.jpg + <name>.json   (split: train, val, test)

The json holds `text` (list of instructions; evaluation uses text[0]), `is_sentence` (long query vs
short phrase) and `shapes` [{label, points [[x, y], ...]}]. Polygons are drawn largest area first with
integer (truncated) vertices, boundary included: a label containing "ignore" paints 255 (excluded from
loss and metrics), label "flag" is skipped, any other label paints foreground 1.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from stamp.data import templates as T
from stamp.data.coco import read_json
from stamp.data.errors import DataError
from stamp.data.refer import check_image, template_rng
from stamp.data.sample import IGNORE_INDEX, StampSample, Turn


def polygon_area(points: np.ndarray) -> float:
    """Absolute shoelace area of a polygon given as (K, 2) points."""
    x, y = points[:, 0], points[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def shapes_to_mask(shapes: list[dict], height: int, width: int) -> np.ndarray:
    """Rasterise ReasonSeg `shapes` into a uint8 HxW mask of 0 / 1 / 255 (rules in the module doc)."""
    polys = []
    for shape in shapes:
        label = str(shape["label"])
        if label == "flag":
            continue
        points = np.asarray(shape["points"], dtype=np.float64).reshape(-1, 2)
        value = IGNORE_INDEX if "ignore" in label else 1
        polys.append((polygon_area(points), value, points.astype(np.int32)))
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for _, value, points in sorted(polys, key=lambda p: -p[0]):
        xy = [(int(x), int(y)) for x, y in points]
        if len(xy) >= 2:
            draw.polygon(xy, fill=value, outline=value)
        elif xy:
            draw.point(xy, fill=value)
    return np.asarray(canvas, dtype=np.uint8).copy()


class ReasonSegDataset:
    """One ReasonSeg split as `StampSample`s (task "reason"); masks are built on access.

    Args:
        root: folder holding `train/`, `val/`, `test/`.
        split: one of those folder names.
        template_seed: None for the canonical wording (LISA's evaluation prompt), an int for variety.
        all_texts: one sample per instruction in `text` instead of only `text[0]`.
    """

    def __init__(
        self, root: str | Path, split: str = "val", template_seed: int | None = None, all_texts: bool = False
    ) -> None:
        self.root, self.split, self.template_seed = Path(root), split, template_seed
        folder = self.root / split
        if not self.root.is_dir():
            raise DataError(f"ReasonSeg root not found: {self.root}")
        if not folder.is_dir():
            found = sorted(p.name for p in self.root.iterdir() if p.is_dir())
            raise DataError(
                f"ReasonSeg split folder not found: {folder}; available: {', '.join(found) or 'none'}"
            )
        self.items: list[tuple[Path, int]] = []
        for json_path in sorted(folder.glob("*.json")):
            texts = self._read(json_path)["text"]  # reading validates every file up front
            n_texts = len(texts) if all_texts else 1
            self.items += [(json_path, k) for k in range(n_texts)]
        if not self.items:
            raise DataError(f"no ReasonSeg annotations (*.json) in {folder}")

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[StampSample]:
        return (self[i] for i in range(len(self)))

    @staticmethod
    def _read(path: Path) -> dict:
        data = read_json(path, "ReasonSeg annotation")
        if not isinstance(data, dict) or not data.get("text") or not isinstance(data.get("shapes"), list):
            raise DataError(
                f"corrupt ReasonSeg annotation {path}: needs a non-empty 'text' and a 'shapes' list"
            )
        if isinstance(data["text"], str):
            data["text"] = [data["text"]]
        return data

    def __getitem__(self, index: int) -> StampSample:
        json_path, k = self.items[index]
        data = self._read(json_path)
        image_path = check_image(json_path.with_suffix(".jpg"))
        with Image.open(image_path) as im:
            width, height = im.size
        try:
            mask = shapes_to_mask(data["shapes"], height, width)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"corrupt ReasonSeg annotation {json_path}: bad shape ({exc})") from None
        text = str(data["text"][k]).strip()
        is_sentence = bool(data.get("is_sentence", False))
        rng = template_rng(self.template_seed, index)
        question = T.sentence_question(rng, text) if is_sentence else T.refer_question(rng, text)
        turns = [Turn("user", question), Turn("assistant", T.seg_answer(rng))]
        meta = {
            "source": "reasonseg",
            "split": self.split,
            "expression": text,
            "is_sentence": is_sentence,
            "name": json_path.stem,
        }
        sid = f"reasonseg/{self.split}/{json_path.stem}" + (f"/{k}" if k else "")
        return StampSample(sid, image_path, turns, [mask], task="reason", meta=meta)


def load_reasonseg(
    root: str | Path, split: str = "val", template_seed: int | None = None, all_texts: bool = False
) -> ReasonSegDataset:
    """Open one ReasonSeg split (see `ReasonSegDataset`)."""
    return ReasonSegDataset(root, split, template_seed, all_texts)
