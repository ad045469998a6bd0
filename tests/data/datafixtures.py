"""Writers of tiny data sets in each real on-disk format, with the expected masks drawn independently
here by numpy slicing (shared by the tests of tests/data)."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

COCO_DIR = Path("images") / "mscoco" / "images" / "train2014"
# image id -> (width, height)
IMAGE_SIZES = {1: (40, 30), 2: (52, 36)}


def coco_file_name(image_id: int) -> str:
    return f"COCO_train2014_{image_id:012d}.jpg"


def write_image(path: Path, size: tuple[int, int], seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)


def uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO uncompressed RLE written by hand: column-major runs, starting with a run of zeros."""
    flat = mask.flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": [int(c) for c in counts]}


def expected_coco_masks() -> dict[int, np.ndarray]:
    """ann id -> expected 0/1 mask, drawn by slicing."""
    w1, h1 = IMAGE_SIZES[1]
    w2, h2 = IMAGE_SIZES[2]
    rect = np.zeros((h1, w1), np.uint8)
    rect[5:20, 3:17] = 1  # polygon [3,5, 17,5, 17,20, 3,20]: pycocotools fills x in [3, 17), y in [5, 20)
    ell = np.zeros((h1, w1), np.uint8)
    ell[2:10, 20:38] = 1
    ell[10:25, 30:38] = 1  # an L shape, given as uncompressed RLE
    two = np.zeros((h2, w2), np.uint8)
    two[4:12, 4:12] = 1
    two[20:30, 30:45] = 1  # two squares in one annotation, as two polygons
    crowd = np.zeros((h2, w2), np.uint8)
    crowd[0:3, 0:52] = 1
    return {10: rect, 11: ell, 12: two, 13: crowd}


def coco_instances() -> dict:
    masks = expected_coco_masks()
    images = [
        {"id": i, "file_name": coco_file_name(i), "width": w, "height": h}
        for i, (w, h) in IMAGE_SIZES.items()
    ]
    anns = [
        {
            "id": 10,
            "image_id": 1,
            "category_id": 1,
            "iscrowd": 0,
            "segmentation": [[3, 5, 17, 5, 17, 20, 3, 20]],
        },
        {
            "id": 11,
            "image_id": 1,
            "category_id": 2,
            "iscrowd": 0,
            "segmentation": uncompressed_rle(masks[11]),
        },
        {
            "id": 12,
            "image_id": 2,
            "category_id": 1,
            "iscrowd": 0,
            "segmentation": [[4, 4, 12, 4, 12, 12, 4, 12], [30, 20, 45, 20, 45, 30, 30, 30]],
        },
        {
            "id": 13,
            "image_id": 2,
            "category_id": 2,
            "iscrowd": 1,
            "segmentation": uncompressed_rle(masks[13]),
        },
    ]
    for a in anns:
        a["bbox"], a["area"] = [0, 0, 1, 1], 1
    return {
        "images": images,
        "annotations": anns,
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
    }


def _sentences(*texts_ids: tuple[str, int]) -> list[dict]:
    return [{"tokens": t.split(), "raw": t, "sent": t, "sent_id": i} for t, i in texts_ids]


REFS = [
    {
        "ref_id": 0,
        "ann_id": 10,
        "image_id": 1,
        "category_id": 1,
        "split": "val",
        "sentences": _sentences(("left box", 100), ("the square", 101)),
    },
    {
        "ref_id": 1,
        "ann_id": 11,
        "image_id": 1,
        "category_id": 2,
        "split": "val",
        "sentences": _sentences(("the l shape", 102)),
    },
    {
        "ref_id": 2,
        "ann_id": 12,
        "image_id": 2,
        "category_id": 1,
        "split": "testA",
        "sentences": _sentences(("two squares", 103)),
    },
    {
        "ref_id": 3,
        "ann_id": 10,
        "image_id": 1,
        "category_id": 1,
        "split": "train",
        "sentences": _sentences(("box", 104)),
    },
]
GREFS = [
    {
        "ref_id": 0,
        "ann_id": [10, 11],
        "category_id": [1, 2],
        "image_id": 1,
        "split": "val",
        "no_target": False,
        "sentences": _sentences(("both things", 200)),
    },
    {
        "ref_id": 1,
        "ann_id": [-1],
        "category_id": [-1],
        "image_id": 2,
        "split": "val",
        "no_target": True,
        "sentences": _sentences(("the giraffe", 201)),
    },
    {
        "ref_id": 2,
        "ann_id": [12, 13],
        "category_id": [1, 2],
        "image_id": 2,
        "split": "val",
        "no_target": False,
        "sentences": _sentences(("squares and crowd", 202)),
    },
    {
        "ref_id": 3,
        "ann_id": [10],
        "category_id": [1],
        "image_id": 1,
        "split": "testB",
        "no_target": False,
        "sentences": _sentences(("one", 203)),
    },
]


def write_coco_root(root: Path) -> Path:
    """refcoco and refcoco+ (refs(unc).p), refcocog (refs(umd).p), grefcoco (grefs(unc).json) and COCO images."""
    for image_id, size in IMAGE_SIZES.items():
        write_image(root / COCO_DIR / coco_file_name(image_id), size, seed=image_id)
    instances = json.dumps(coco_instances())
    for name in ("refcoco", "refcoco+", "refcocog", "grefcoco"):
        (root / name).mkdir()
        (root / name / "instances.json").write_text(instances)
    for name in ("refcoco", "refcoco+"):
        with open(root / name / "refs(unc).p", "wb") as f:
            pickle.dump(REFS, f, protocol=2)
    with open(root / "refcocog" / "refs(umd).p", "wb") as f:
        pickle.dump(REFS, f)
    (root / "grefcoco" / "grefs(unc).json").write_text(json.dumps(GREFS))
    return root
