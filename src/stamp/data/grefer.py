"""gRefCOCO: generalized referring expressions with several targets or none.

    <root>/grefcoco/grefs(unc).json   (or grefs(unc).p) refs whose ann_id / category_id are lists
    <root>/grefcoco/instances.json    COCO-style annotations
    images as for RefCOCO (LISA layout: <root>/images/mscoco/images/train2014/)

A no-target ref (`no_target: true` or `ann_id == [-1]`) gets an empty mask; otherwise the target is the
union of the listed annotations, crowd regions skipped. One sample per sentence.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from stamp.data import templates as T
from stamp.data.coco import CocoInstances, read_json
from stamp.data.errors import DataError
from stamp.data.refer import check_image, default_image_root, sentence_text, template_rng
from stamp.data.safe_pickle import load_plain_pickle
from stamp.data.sample import StampSample, Turn


def ann_id_list(value: object) -> list[int]:
    """A ref's `ann_id` as a list of ints (older files store a bare int)."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return [int(v) for v in values]


def is_no_target(ref: dict) -> bool:
    """True for refs that match no object."""
    ids = ann_id_list(ref.get("ann_id", [-1]))
    return bool(ref.get("no_target")) or not ids or all(i == -1 for i in ids)


class GReferDataset:
    """One gRefCOCO split, one `StampSample` per sentence (task "grefer", `meta["no_target"]`).

    Args:
        root: data root holding `grefcoco/` (or `<dataset>/`).
        split: "train", "val", "testA" or "testB".
        image_root: folder of the images; default the LISA COCO layout under `root`.
        template_seed: None for canonical wording, an int for seeded variety.
        no_target_emits_seg: no-target answers still contain `<|seg|>` with an all-zero mask;
            False gives an answer in words only and no mask.
        dataset: folder name under `root` (default "grefcoco").
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "val",
        image_root: str | Path | None = None,
        template_seed: int | None = None,
        no_target_emits_seg: bool = True,
        dataset: str = "grefcoco",
    ) -> None:
        self.root, self.split, self.dataset = Path(root), split, dataset
        self.image_root = Path(image_root) if image_root is not None else default_image_root(root, dataset)
        self.template_seed = template_seed
        self.no_target_emits_seg = no_target_emits_seg
        folder = self.root / dataset
        if not folder.is_dir():
            raise DataError(
                f"dataset folder not found: {folder} (expected grefs(unc).json and instances.json)"
            )
        self.refs_path = folder / "grefs(unc).json"
        if not self.refs_path.is_file() and (folder / "grefs(unc).p").is_file():
            self.refs_path = folder / "grefs(unc).p"
            refs = load_plain_pickle(self.refs_path)
        else:
            refs = read_json(self.refs_path, "grefs file")
        self.instances = CocoInstances.load(folder / "instances.json")
        self.refs = _select(refs, split, self.refs_path, self.instances)
        self.items = [(ref, sent) for ref in self.refs for sent in ref["sentences"]]

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[StampSample]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, index: int) -> StampSample:
        ref, sent = self.items[index]
        image_id = int(ref["image_id"])
        path = check_image(self.image_root / self.instances.images[image_id]["file_name"])
        expr = sentence_text(sent)
        rng = template_rng(self.template_seed, index)
        no_target = is_no_target(ref)
        ann_ids = [] if no_target else ann_id_list(ref["ann_id"])
        masks: list[np.ndarray] = []
        if no_target:
            answer = T.no_target_answer(rng, None, emit_seg=self.no_target_emits_seg)
            if self.no_target_emits_seg:
                h, w = self.instances.image_size(image_id)
                masks = [np.zeros((h, w), dtype=np.uint8)]
        else:
            answer = T.seg_answer(rng, plural=len(ann_ids) > 1)
            masks = [self.instances.union_mask(ann_ids, image_id)]
        turns = [Turn("user", T.refer_question(rng, expr)), Turn("assistant", answer)]
        meta = {
            "source": self.dataset,
            "split": self.split,
            "expression": expr,
            "no_target": no_target,
            "ann_ids": ann_ids,
            "ref_id": ref["ref_id"],
            "image_id": image_id,
            "sent_id": sent.get("sent_id"),
        }
        sid = f"{self.dataset}/{self.split}/{sent.get('sent_id', index)}"
        return StampSample(sid, path, turns, masks, task="grefer", meta=meta)


def load_grefer(
    root: str | Path,
    split: str = "val",
    image_root: str | Path | None = None,
    template_seed: int | None = None,
    no_target_emits_seg: bool = True,
) -> GReferDataset:
    """Open one gRefCOCO split (see `GReferDataset`)."""
    return GReferDataset(root, split, image_root, template_seed, no_target_emits_seg)


def _select(refs: object, split: str, path: Path, instances: CocoInstances) -> list[dict]:
    if not isinstance(refs, list) or not all(isinstance(r, dict) for r in refs):
        raise DataError(f"corrupt grefs file {path}: expected a list of dicts")
    chosen = [r for r in refs if r.get("split") == split]
    if not chosen:
        found = sorted({str(r.get("split")) for r in refs})
        raise DataError(f"split {split!r} not found in {path}; available: {', '.join(found)}")
    for ref in chosen:
        missing = [k for k in ("ref_id", "ann_id", "image_id", "sentences") if k not in ref]
        if missing:
            raise DataError(f"corrupt grefs file {path}: ref {ref.get('ref_id')} lacks {', '.join(missing)}")
        try:
            ann_ids = [] if is_no_target(ref) else ann_id_list(ref["ann_id"])
        except (TypeError, ValueError):
            raise DataError(f"corrupt grefs file {path}: ref {ref['ref_id']} has a bad ann_id") from None
        if ref["image_id"] not in instances.images or any(a not in instances.anns for a in ann_ids):
            raise DataError(f"corrupt grefs file {path}: ref {ref['ref_id']} points outside {instances.path}")
    return chosen
