"""RefCOCO / RefCOCO+ / RefCOCOg / RefCLEF in the refer toolkit's on-disk format.

    <root>/<dataset>/instances.json         COCO-style images, annotations (polygons or RLE), categories
    <root>/<dataset>/refs(<splitBy>).p      pickled list of refs: ref_id, ann_id, image_id, split, sentences
    <root>/images/mscoco/images/train2014/  images (LISA layout); refclef: <root>/images/saiapr_tc-12/

One sample per sentence: "What is <sentence> in this image? ..." -> "Sure, it is <|seg|>." with the
referred annotation's mask. The pickle is read with `safe_pickle` (no code can run from it).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from stamp.data import templates as T
from stamp.data.coco import CocoInstances
from stamp.data.errors import DataError
from stamp.data.safe_pickle import load_plain_pickle
from stamp.data.sample import StampSample, Turn

DEFAULT_SPLIT_BY = {"refcoco": "unc", "refcoco+": "unc", "refcocog": "umd", "refclef": "berkeley"}


def default_image_root(root: str | Path, dataset: str) -> Path:
    """Where LISA's layout keeps the images of `dataset` (COCO train2014, or SAIAPR for refclef)."""
    root = Path(root)
    if dataset == "refclef":
        return root / "images" / "saiapr_tc-12"
    return root / "images" / "mscoco" / "images" / "train2014"


def template_rng(template_seed: int | None, index: int) -> np.random.Generator | None:
    """Seeded per-sample generator for template choice; None (canonical templates) without a seed."""
    return None if template_seed is None else np.random.default_rng([template_seed, index])


def check_image(path: Path) -> Path:
    """`path` if it is a file, else `DataError` naming it."""
    if not path.is_file():
        raise DataError(f"image not found: {path}")
    return path


class ReferDataset:
    """One refer-format split, one `StampSample` per sentence (masks decoded on access).

    Args:
        root: the data root holding `<dataset>/instances.json` and `<dataset>/refs(<split_by>).p`.
        dataset: "refcoco", "refcoco+", "refcocog", "refclef" (or any folder name in the same format).
        split: e.g. "train", "val", "testA", "testB" (unc) or "test" (umd).
        split_by: "unc", "umd", "google", "berkeley"; default per dataset (unc for unknown names).
        image_root: folder the images' `file_name`s are relative to; default `default_image_root`.
        template_seed: None for the canonical question/answer (evaluation), an int for seeded variety.
    """

    def __init__(
        self,
        root: str | Path,
        dataset: str = "refcoco",
        split: str = "val",
        split_by: str | None = None,
        image_root: str | Path | None = None,
        template_seed: int | None = None,
    ) -> None:
        self.root, self.dataset, self.split = Path(root), dataset, split
        self.split_by = split_by or DEFAULT_SPLIT_BY.get(dataset, "unc")
        self.image_root = Path(image_root) if image_root is not None else default_image_root(root, dataset)
        self.template_seed = template_seed
        folder = self.root / dataset
        if not folder.is_dir():
            raise DataError(
                f"dataset folder not found: {folder} (expected instances.json and refs(*).p there)"
            )
        self.refs_path = folder / f"refs({self.split_by}).p"
        if not self.refs_path.is_file():
            raise DataError(f"refs file not found: {self.refs_path} (split_by={self.split_by!r})")
        refs = load_plain_pickle(self.refs_path)
        self.instances = CocoInstances.load(folder / "instances.json")
        self.refs = _select_split(refs, split, self.refs_path)
        _check_refs(self.refs, self.instances, self.refs_path)
        self.items = [(ref, sent) for ref in self.refs for sent in ref["sentences"]]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[StampSample]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: int) -> StampSample:
        ref, sent = self.items[index]
        image = self.instances.images[int(ref["image_id"])]
        path = check_image(self.image_root / image["file_name"])
        expr = sentence_text(sent)
        rng = template_rng(self.template_seed, index)
        turns = [Turn("user", T.refer_question(rng, expr)), Turn("assistant", T.seg_answer(rng))]
        meta = {
            "source": self.dataset,
            "split": self.split,
            "expression": expr,
            "ref_id": ref["ref_id"],
            "ann_id": ref["ann_id"],
            "image_id": ref["image_id"],
            "sent_id": sent.get("sent_id"),
            "category_id": ref.get("category_id"),
        }
        mask = self.instances.mask(int(ref["ann_id"]))
        sid = f"{self.dataset}/{self.split}/{sent.get('sent_id', index)}"
        return StampSample(sid, path, turns, [mask], task="refer", meta=meta)


def load_refer(
    root: str | Path,
    dataset: str = "refcoco",
    split: str = "val",
    split_by: str | None = None,
    image_root: str | Path | None = None,
    template_seed: int | None = None,
) -> ReferDataset:
    """Open one split of a refer-format data set (see `ReferDataset`)."""
    return ReferDataset(root, dataset, split, split_by, image_root, template_seed)


def sentence_text(sent: dict) -> str:
    """The expression of a refer sentence: its processed `sent`, else `raw`."""
    return str(sent.get("sent") or sent.get("raw") or "").strip()


def _select_split(refs: object, split: str, path: Path) -> list[dict]:
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise DataError(f"corrupt refs file {path}: expected a list of dicts")
    found = sorted({str(r.get("split")) for r in refs})
    chosen = [r for r in refs if r.get("split") == split]
    if not chosen:
        raise DataError(f"split {split!r} not found in {path}; available: {', '.join(found)}")
    return chosen


def _check_refs(refs: list[dict], instances: CocoInstances, path: Path) -> None:
    for ref in refs:
        for key in ("ref_id", "ann_id", "image_id", "sentences"):
            if key not in ref:
                raise DataError(f"corrupt refs file {path}: a ref lacks {key!r}")
        if ref["ann_id"] not in instances.anns or ref["image_id"] not in instances.images:
            raise DataError(
                f"corrupt refs file {path}: ref {ref['ref_id']} points to ann {ref['ann_id']} / image "
                f"{ref['image_id']}, missing from {instances.path}"
            )
