"""SynthRef: determinism, split rules, and every mask / short answer re-derived from the scene
description by an evaluator written here, independently of stamp.data.synthref.queries."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from stamp.data import SEG_TOKEN
from stamp.data import templates as T
from stamp.data.synthref import COLOURS, HELD_OUT_PAIRS, SynthRef

# ---- an independent evaluator of the benchmark's rules -------------------------------------------------------
N_CORNERS = {"triangle": 3, "square": 4, "diamond": 4, "pentagon": 5, "hexagon": 6, "star": 10, "cross": 12}
COUNTING_IS_UNCLEAR = {"star", "cross"}
EXTREME_DIRECTIONS = {
    "leftmost": "from_left",
    "rightmost": "from_right",
    "topmost": "from_top",
    "bottommost": "from_bottom",
}


class Ambiguous(Exception):
    pass


def fits(obj: dict, flt: dict | None) -> bool:
    return flt is not None and all(v is None or obj[k] == v for k, v in flt.items())


def the_one(objs: list[dict], flt: dict) -> dict:
    found = [o for o in objs if fits(o, flt)]
    if len(found) != 1:
        raise Ambiguous("anchor is not unique")
    return found[0]


def side_of(a: dict, b: dict, rel: str) -> bool:
    """a is rel of b: clearly (boxes apart) True, clearly not (centre on the other side) False."""
    ax0, ay0, ax1, ay1 = a["bbox"]
    bx0, by0, bx1, by1 = b["bbox"]
    cax, cay = (ax0 + ax1) / 2, (ay0 + ay1) / 2
    cbx, cby = (bx0 + bx1) / 2, (by0 + by1) / 2
    if rel == "left_of":
        yes, no = ax1 <= bx0, cax >= cbx
    elif rel == "right_of":
        yes, no = bx1 <= ax0, cax <= cbx
    elif rel == "above":
        yes, no = ay1 <= by0, cay >= cby
    else:
        yes, no = by1 <= ay0, cay <= cby
    if not yes and not no:
        raise Ambiguous("borderline relation")
    return yes


def corners_of(group: list[dict]) -> list[int]:
    if any(o["kind"] in COUNTING_IS_UNCLEAR for o in group):
        raise Ambiguous("unclear corner count")
    return [N_CORNERS.get(o["kind"], 0) for o in group]


def nth_along(scene: dict, group: list[dict], how: str, n: int) -> int:
    axis = 0 if ("left" in how or "right" in how) else 1
    reverse = any(w in how for w in ("right", "bottom"))
    order = sorted(group, key=lambda o: o["centre"][axis], reverse=reverse)
    side = scene["width"] if axis == 0 else scene["height"]
    if not 1 <= n <= len(order):
        raise Ambiguous("rank out of range")
    me = order[n - 1]["centre"][axis]
    neighbours = [order[j]["centre"][axis] for j in (n - 2, n) if 0 <= j < len(order)]
    if any(abs(me - c) < 0.08 * side for c in neighbours):
        raise Ambiguous("too close to a neighbour")
    return order[n - 1]["index"]


def evaluate(scene: dict, q: dict) -> set[int]:
    objs = scene["objects"]
    group = [o for o in objs if fits(o, q["filter"])]
    op = q["op"]
    if op == "select":
        return {o["index"] for o in group}
    if op == "corners":
        counts = corners_of(group)
        return {o["index"] for o, c in zip(group, counts) if c == q["n"]}
    if op in ("relation", "same_as"):
        anchor = the_one(objs, q["anchor"])
        others = [o for o in group if o["index"] != anchor["index"]]
        if op == "same_as":
            return {o["index"] for o in others if o[q["attr"]] == anchor[q["attr"]]}
        return {o["index"] for o in others if side_of(o, anchor, q["relation"])}
    if len(group) < 2:
        raise Ambiguous("superlative over fewer than two")
    if op == "ordinal":
        return {nth_along(scene, group, q["direction"], q["n"])}
    ext = q["extreme"]
    if ext in ("largest", "smallest"):
        areas = sorted(o["area"] for o in group)
        lo, hi = (areas[-2], areas[-1]) if ext == "largest" else (areas[0], areas[1])
        if hi < 1.25 * lo:
            raise Ambiguous("sizes too close")
        target = areas[-1] if ext == "largest" else areas[0]
        return {o["index"] for o in group if o["area"] == target}
    if ext in ("most_corners", "fewest_corners"):
        counts = corners_of(group)
        best = max(counts) if ext == "most_corners" else min(counts)
        if counts.count(best) != 1:
            raise Ambiguous("tie in corners")
        return {group[counts.index(best)]["index"]}
    return {nth_along(scene, group, EXTREME_DIRECTIONS[ext], 1)}


def grid_words(scene: dict, obj: dict) -> str | None:
    fx, fy = obj["centre"][0] / scene["width"], obj["centre"][1] / scene["height"]
    for f in (fx, fy):
        if abs(f - 1 / 3) < 0.04 or abs(f - 2 / 3) < 0.04:
            return None
    col = "left" if fx < 1 / 3 else ("center" if fx < 2 / 3 else "right")
    row = "top" if fy < 1 / 3 else ("middle" if fy < 2 / 3 else "bottom")
    if row == "middle":
        return col
    return row if col == "center" else f"{row} {col}"


# ---- checks -----------------------------------------------------------------------------------------------------
def check_scene(sample) -> None:
    scene, imap = sample.meta["scene"], sample.meta["instance_map"]
    image = np.asarray(sample.load_image()).astype(int)
    assert image.shape[:2] == imap.shape == (scene["height"], scene["width"])
    for o in scene["objects"]:
        own = imap == o["index"] + 1
        ys, xs = np.nonzero(own)
        assert own.sum() == o["visible_area"] > 0
        assert [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1] == o["bbox"]
        assert np.abs(image[own] - np.array(COLOURS[o["colour"]])).max() <= 10  # painted in its colour
        full = Image.new("L", (scene["width"], scene["height"]), 0)
        ImageDraw.Draw(full).polygon([tuple(p) for p in o["polygon"]], fill=1, outline=1)
        full = np.asarray(full, bool)
        assert full.sum() == o["area"]
        assert not (own & ~full).any()  # visible pixels lie inside the shape ...
        assert (imap[full & ~own] > o["index"] + 1).all()  # ... and the rest is hidden by later objects
        assert o["visible_area"] >= 0.6 * o["area"] - 1


def check_sample(sample, ban_held_out: bool = True) -> None:
    check_scene(sample)
    scene, imap = sample.meta["scene"], sample.meta["instance_map"]
    assert len(sample.meta["targets"]) == len(sample.masks)
    for mask, record in zip(sample.masks, sample.meta["targets"]):
        q = record["query"]
        chosen = evaluate(scene, q)  # raises Ambiguous if the expression were ambiguous
        assert chosen == set(record["indices"])
        expected = np.isin(imap, [i + 1 for i in chosen]).astype(np.uint8)
        assert mask.dtype == np.uint8 and np.array_equal(mask, expected)
        if q["plural"]:
            assert len(chosen) >= 2
        elif "no_target" not in sample.meta["subtask"] or chosen:
            assert len(chosen) == 1
    for record in sample.meta["vqa"]:
        check_vqa(scene, record)
    if ban_held_out:
        assert all((o["kind"], o["colour"]) not in HELD_OUT_PAIRS for o in scene["objects"])
        for q in [r["query"] for r in sample.meta["targets"] + sample.meta["vqa"]]:
            for flt in (q["filter"], q["anchor"]):
                assert flt is None or (flt["kind"], flt["colour"]) not in HELD_OUT_PAIRS


def check_vqa(scene: dict, record: dict) -> None:
    chosen = evaluate(scene, record["query"])
    kind, answer = record["type"], record["answer"]
    if kind == "count":
        assert answer == str(len(chosen))
    elif kind == "exists":
        assert answer == ("yes" if chosen else "no")
    else:
        assert len(chosen) == 1
        obj = scene["objects"][chosen.pop()]
        assert (
            answer
            == {"colour": obj["colour"], "shape": obj["kind"], "position": grid_words(scene, obj)}[kind]
        )


# ---- tests ---------------------------------------------------------------------------------------------------------
def test_same_seed_same_samples() -> None:
    a, b = SynthRef("val", seed=5), SynthRef("val", seed=5)
    for i in (0, 3, 17):
        x, y = a[i], b[i]
        assert x.id == y.id == f"synthref/val/{i}"
        assert [(t.role, t.text) for t in x.turns] == [(t.role, t.text) for t in y.turns]
        assert np.array_equal(np.asarray(x.image), np.asarray(y.image))
        assert all(np.array_equal(m, n) for m, n in zip(x.masks, y.masks))
        assert x.meta["scene"] == y.meta["scene"] and x.meta["targets"] == y.meta["targets"]
    assert a[0].meta["scene"] != SynthRef("val", seed=6)[0].meta["scene"]
    assert a[0].meta["scene"] != SynthRef("test", seed=5)[0].meta["scene"]


def test_lengths_stream_and_iteration() -> None:
    assert len(SynthRef("val")) == 1000 and len(SynthRef("test", length=7)) == 7
    with pytest.raises(IndexError):
        SynthRef("val", length=3)[3]
    train = SynthRef("train", seed=1)
    with pytest.raises(TypeError, match="endless"):
        len(train)
    stream = train.stream(start=2, step=3)
    assert [next(stream).id for _ in range(3)] == ["synthref/train/2", "synthref/train/5", "synthref/train/8"]
    assert [s.id for s in SynthRef("val", length=2)] == ["synthref/val/0", "synthref/val/1"]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown SynthRef split"):
        SynthRef("dev")
    with pytest.raises(ValueError, match="unknown SynthRef task"):
        SynthRef("val", task_weights={"refer": 1.0, "caption": 1.0})
    with pytest.raises(ValueError, match="image_size_range"):
        SynthRef("val", image_size_range=(300, 200))


@pytest.mark.parametrize("split", ["val", "train"])
def test_masks_and_answers_match_an_independent_evaluator(split: str) -> None:
    ds = SynthRef(split, seed=11)
    tasks = set()
    for i in range(150):
        sample = ds[i]
        tasks.add(sample.task)
        check_sample(sample)
        w, h = sample.image.size
        assert all(m.shape == (h, w) and set(np.unique(m)) <= {0, 1} for m in sample.masks)
        assert all(224 <= s <= 448 for s in (w, h))
        if sample.task == "vqa":
            assert sample.meta["answer"] == sample.meta["vqa"][0]["answer"] and not sample.masks
    assert tasks == {"refer", "grefer", "reason", "vqa", "multi", "dialogue"}


def test_each_task_alone() -> None:
    for task in ("refer", "grefer", "no_target", "reason", "vqa", "multi", "dialogue"):
        ds = SynthRef("val", seed=2, task_weights={task: 1.0}, length=15)
        for sample in ds:
            check_sample(sample)
            if task == "no_target":
                assert sample.meta["no_target"] and not sample.masks[0].any()
                assert SEG_TOKEN in sample.turns[1].text
            if task == "dialogue":
                assert len(sample.turns) >= 4


def test_vqa_kind_weights() -> None:
    import hashlib

    # without the option, the train stream is the one every stage so far was trained on (this digest
    # was taken before the option existed)
    digest = hashlib.sha256()
    for i in range(60):
        digest.update("|".join(t.text for t in SynthRef("train", seed=13).generate(i).turns).encode())
    assert digest.hexdigest()[:16] == "4c7292ca24bf819a"
    only = SynthRef("val", seed=4, task_weights={"vqa": 1.0}, vqa_kind_weights={"shape": 1.0}, length=30)
    for sample in only:
        check_sample(sample)
        assert sample.meta["subtask"] == "vqa_shape"
    mixed = SynthRef("train", seed=4, task_weights={"vqa": 1.0}, vqa_kind_weights={"shape": 3, "count": 1})
    kinds = [mixed.generate(i).meta["subtask"] for i in range(200)]
    assert set(kinds) == {"vqa_shape", "vqa_count"} and 120 < kinds.count("vqa_shape") < 180
    dialogue = SynthRef("val", seed=4, task_weights={"dialogue": 1.0}, vqa_kind_weights={"position": 1.0})
    asked = [v["type"] for i in range(20) for v in dialogue[i].meta["vqa"]]
    assert asked and set(asked) == {"position"}  # every task that asks a question follows the weights
    with pytest.raises(ValueError, match="unknown SynthRef VQA kind"):
        SynthRef("val", vqa_kind_weights={"shapes": 1.0})
    with pytest.raises(ValueError, match="at least one positive"):
        SynthRef("val", vqa_kind_weights={"shape": 0.0})


def test_no_target_without_seg() -> None:
    ds = SynthRef("val", seed=3, task_weights={"no_target": 1.0}, no_target_emits_seg=False)
    for i in range(10):
        sample = ds[i]
        assert sample.masks == [] and SEG_TOKEN not in sample.turns[1].text
        assert evaluate(sample.meta["scene"], sample.meta["query"]) == set()
        assert sample.meta["expression"].removeprefix("the ") in sample.turns[1].text


def test_compositional_split_uses_held_out_pairs() -> None:
    ds = SynthRef("compositional", seed=0, task_weights={"refer": 1.0})
    hits = 0
    for i in range(40):
        sample = ds[i]
        check_sample(sample, ban_held_out=False)
        objs = sample.meta["scene"]["objects"]
        assert any((o["kind"], o["colour"]) in HELD_OUT_PAIRS for o in objs)
        target = objs[sample.meta["targets"][0]["indices"][0]]
        hits += (target["kind"], target["colour"]) in HELD_OUT_PAIRS
    assert hits >= 30  # the held-out object is nearly always the one referred to


def test_training_mix_has_hard_cases() -> None:
    """Same-colour distractors are common and no-target requests frequent (see the calibration notes)."""
    ds = SynthRef("train", seed=4)
    refer = twins = no_target = single_mask = 0
    for i in range(300):
        sample = ds[i]
        if sample.task in ("refer", "grefer"):
            single_mask += 1
            no_target += sample.meta["no_target"]
        if sample.task == "refer":
            objs = sample.meta["scene"]["objects"]
            t = objs[sample.meta["targets"][0]["indices"][0]]
            refer += 1
            twins += any(o["colour"] == t["colour"] and o["kind"] != t["kind"] for o in objs)
    assert twins / refer > 0.5
    assert 0.15 < no_target / single_mask < 0.35


def test_templates_canonical_and_seeded() -> None:
    assert (
        T.refer_question(None, "the cat") == "What is the cat in this image? Please output segmentation mask."
    )
    assert T.seg_answer(None) == f"Sure, it is {SEG_TOKEN}."
    a = [T.refer_question(np.random.default_rng(1), "x") for _ in range(3)]
    assert a == [T.refer_question(np.random.default_rng(1), "x") for _ in range(3)]
    assert T.no_target_answer(None, "purple hexagon").startswith("There is no purple hexagon")


def test_the_checker_catches_wrong_masks() -> None:
    sample = SynthRef("val", seed=0, task_weights={"refer": 1.0})[0]
    check_sample(sample)
    sample.masks[0] = np.zeros_like(sample.masks[0])
    with pytest.raises(AssertionError):
        check_sample(sample)
    scene = {"width": 100, "height": 100, "objects": []}
    for k, (x, kind) in enumerate(((10, "circle"), (14, "circle"))):
        scene["objects"].append(
            {
                "index": k,
                "kind": kind,
                "colour": "red",
                "size": "small",
                "bbox": [x, 10, x + 20, 30],
                "centre": [x + 10, 20],
                "area": 300,
            }
        )
    with pytest.raises(Ambiguous):  # centres 4 px apart: "the leftmost circle" is not clear
        evaluate(scene, {"op": "extreme", "filter": {"kind": "circle"}, "extreme": "leftmost"})
