"""Write SynthRef samples in the real benchmarks' on-disk formats, so every loader (and any outside tool
that reads those formats) can consume them.

    export_synthref("out/synth_refer", "val", 500, "refer")
    load_refer("out/synth_refer", dataset="refcoco", split="val")       # reads it back
    stamp eval --data refcoco:out/synth_refer --split val                # evaluates on it

Layouts (`out` is `out_dir`), each what `stamp eval --data KIND:out` reads (`EVAL_KINDS`):
    refer      RefCOCO in the LISA layout: out/refcoco/instances.json (RLE masks of every visible object)
               + out/refcoco/refs(unc).p, images as PNG under out/images/mscoco/images/train2014/ (the
               loader's default image root)
    grefer     out/grefcoco/grefs(unc).json + out/grefcoco/instances.json, images as for refer
    reasonseg  out/<split>/<name>.jpg + <name>.json (scenes without occlusion, so polygons are exact)
    llava      out/conversations.json + images as PNG under out/images/, named relative to out/ (the
               JSON's folder, the loader's default image root): KIND:PATH is llava:out/conversations.json
Writing goes to a temporary folder next to `out`, renamed into place at the end.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import tempfile
import uuid
from pathlib import Path

from tqdm import tqdm

from stamp.data.coco import mask_to_rle
from stamp.data.errors import DataError
from stamp.data.sample import StampSample
from stamp.data.synthref.dataset import SPLITS, SynthRef
from stamp.data.synthref.scenes import KINDS
from stamp.faults import WriteError, describe, is_fault
from stamp.filemodes import new_dir_mode

FORMATS = ("refer", "grefer", "reasonseg", "llava")
EVAL_KINDS = {"refer": "refcoco", "grefer": "grefcoco", "reasonseg": "reasonseg", "llava": "llava"}
"""The `stamp eval --data KIND:...` kind that reads each format's export."""
# Which SynthRef tasks each format can represent.
EXPORT_TASK_WEIGHTS = {
    "refer": {"refer": 1.0},
    "grefer": {"refer": 0.4, "grefer": 0.35, "no_target": 0.25},
    "reasonseg": {"reason": 0.6, "refer": 0.4},
    "llava": {"vqa": 1.0},
}
COCO_IMAGE_DIR = Path("images") / "mscoco" / "images" / "train2014"
CATEGORIES = [{"id": k + 1, "name": kind, "supercategory": "shape"} for k, kind in enumerate(KINDS)]


def export_synthref(
    out_dir: str | Path,
    split: str,
    n: int,
    fmt: str,
    seed: int = 0,
    overwrite: bool = False,
    image_size_range: tuple[int, int] = (224, 448),
    progress: bool = True,
) -> Path:
    """Write `n` SynthRef samples of `split` to `out_dir` in format `fmt` and return `out_dir`.

    Sample i is `SynthRef(split, seed, task_weights=EXPORT_TASK_WEIGHTS[fmt]).generate(i)` (the
    reasonseg export also forbids occlusion). Raises `DataError` if `out_dir` exists and is not empty,
    unless `overwrite`.
    """
    if fmt not in FORMATS:
        raise DataError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if split not in SPLITS:
        raise DataError(f"unknown SynthRef split {split!r}; choose one of {', '.join(SPLITS)}")
    if n < 1:
        raise DataError(f"n must be >= 1, got {n}")
    out = Path(out_dir)
    if out.exists() and not overwrite and (out.is_file() or any(out.iterdir())):
        raise DataError(
            f"output exists and is not empty: {out} (use --force, overwrite=True in Python, to replace it)"
        )
    ds = SynthRef(
        split,
        seed=seed,
        task_weights=EXPORT_TASK_WEIGHTS[fmt],
        image_size_range=image_size_range,
        min_visible=1.0 if fmt == "reasonseg" else 0.6,
    )
    existed = out.exists() and any(out.iterdir())
    tmp = None
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        os.chmod(tmp, new_dir_mode())  # (mkdtemp makes 0700)
        samples = tqdm(range(n), desc=f"synthref {split} -> {fmt}", disable=not progress, unit="sample")
        _WRITERS[fmt](tmp, split, (ds.generate(i) for i in samples))
        info = {"generator": "synthref", "split": split, "n": n, "format": fmt, "seed": seed}
        (tmp / "export_info.json").write_text(json.dumps(info, indent=1))
        _commit(tmp, out)
    except BaseException as err:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if is_fault(err):
            kept = "; the earlier export there is untouched" if existed else ""
            raise WriteError(
                f"{describe(err)} while exporting to {out}/; nothing was written there{kept}", err
            ) from None
        raise
    return out


def _commit(tmp: Path, out: Path) -> None:
    """Move the finished temporary folder to `out`, replacing what is there."""
    if not out.exists():
        os.rename(tmp, out)
        return
    trash = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(out, trash)
    os.rename(tmp, out)
    if trash.is_dir():
        shutil.rmtree(trash)
    else:
        trash.unlink()


def _file_name(split: str, index: int, ext: str) -> str:
    return f"synthref_{split}_{index:06d}.{ext}"


def _coco_records(
    sample: StampSample, image_id: int, file_name: str, first_ann_id: int
) -> tuple[dict, list[dict]]:
    """COCO image entry and one annotation (visible-pixel RLE) per scene object."""
    scene, imap = sample.meta["scene"], sample.meta["instance_map"]
    image = {"id": image_id, "file_name": file_name, "height": scene["height"], "width": scene["width"]}
    anns = []
    for obj in scene["objects"]:
        x0, y0, x1, y1 = obj["bbox"]
        anns.append(
            {
                "id": first_ann_id + obj["index"],
                "image_id": image_id,
                "category_id": KINDS.index(obj["kind"]) + 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0],
                "area": obj["visible_area"],
                "iscrowd": 0,
                "segmentation": mask_to_rle(imap == obj["index"] + 1),
                "colour": obj["colour"],
                "size": obj["size"],
            }
        )
    return image, anns


def _sentence(text: str, sent_id: int) -> dict:
    return {"tokens": text.split(), "raw": text, "sent": text, "sent_id": sent_id}


def _write_coco_style(out: Path, split: str, samples, folder: str, grefs: bool) -> None:
    images, anns, refs = [], [], []
    image_dir = out / COCO_IMAGE_DIR
    image_dir.mkdir(parents=True)
    for i, sample in enumerate(samples):
        file_name = _file_name(split, i, "png")
        sample.load_image().save(image_dir / file_name, compress_level=1)
        image, objs = _coco_records(sample, i + 1, file_name, len(anns) + 1)
        images.append(image)
        anns += objs
        targets = sample.meta["targets"][0]["indices"]
        ann_ids = [objs[k]["id"] for k in targets]
        cat_ids = [objs[k]["category_id"] for k in targets]
        ref = {"ref_id": i, "image_id": i + 1, "split": split, "sent_ids": [i], "file_name": file_name}
        ref["sentences"] = [_sentence(sample.meta["expression"], i)]
        if grefs:
            no_target = not ann_ids
            ref.update(ann_id=ann_ids or [-1], category_id=cat_ids or [-1], no_target=no_target)
        else:
            ref.update(ann_id=ann_ids[0], category_id=cat_ids[0])
        refs.append(ref)
    (out / folder).mkdir()
    instances = {"images": images, "annotations": anns, "categories": CATEGORIES}
    (out / folder / "instances.json").write_text(json.dumps(instances))
    if grefs:
        (out / folder / "grefs(unc).json").write_text(json.dumps(refs))
    else:
        with open(out / folder / "refs(unc).p", "wb") as f:
            pickle.dump(refs, f, protocol=2)  # plain dicts/lists/str/int: no globals in the stream


def _write_refer(out: Path, split: str, samples) -> None:
    _write_coco_style(out, split, samples, "refcoco", grefs=False)


def _write_grefer(out: Path, split: str, samples) -> None:
    _write_coco_style(out, split, samples, "grefcoco", grefs=True)


def _write_reasonseg(out: Path, split: str, samples) -> None:
    folder = out / split
    folder.mkdir(parents=True)
    for i, sample in enumerate(samples):
        name = f"synthref_{split}_{i:06d}"
        sample.load_image().save(folder / f"{name}.jpg", quality=95)
        objects = sample.meta["scene"]["objects"]
        shapes = [
            {"label": "target", "points": objects[k]["polygon"]} for k in sample.meta["targets"][0]["indices"]
        ]
        record = {
            "text": [sample.meta["expression"]],
            "is_sentence": sample.meta["is_sentence"],
            "shapes": shapes,
        }
        (folder / f"{name}.json").write_text(json.dumps(record))


def _write_llava(out: Path, split: str, samples) -> None:
    image_dir = out / "images"
    image_dir.mkdir(parents=True)
    entries = []
    for i, sample in enumerate(samples):
        file_name = _file_name(split, i, "png")
        sample.load_image().save(image_dir / file_name, compress_level=1)
        conv = [{"from": "human" if t.role == "user" else "gpt", "value": t.text} for t in sample.turns]
        conv[0]["value"] = "<image>\n" + conv[0]["value"]
        entry = {"id": sample.id, "image": f"images/{file_name}", "conversations": conv}
        if "answer" in sample.meta:
            entry["answer"] = sample.meta["answer"]
        entries.append(entry)
    (out / "conversations.json").write_text(json.dumps(entries, indent=1))


_WRITERS = {
    "refer": _write_refer,
    "grefer": _write_grefer,
    "reasonseg": _write_reasonseg,
    "llava": _write_llava,
}
