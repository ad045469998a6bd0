"""`stamp eval --protocol authors`: the paper's evaluation protocol, end to end on a LISA-layout folder."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from stamp.cli import main
from stamp.data.registry import open_dataset
from stamp.data.synthref.export import export_synthref
from stamp.eval.protocols import AUTHORS_QUESTIONS, get_protocol

TESTS = Path(__file__).resolve().parents[1]
AUTHORS_FULL = TESTS / "fixtures" / "authors_checkpoints" / "full"
SAM_TINY = TESTS / "refine" / "fixtures" / "sam_tiny_original.safetensors"


@pytest.fixture(scope="module")
def lisa(tmp_path_factory):
    """SynthRef exported as RefCOCO in the LISA layout (root/refcoco/...)."""
    root = tmp_path_factory.mktemp("lisa")
    export_synthref(root, "val", 6, "refer", progress=False)
    return root


def _eval(lisa, out, *extra):
    argv = ["eval", "--data", f"refcoco:{lisa}", "--model", str(AUTHORS_FULL), "--out", str(out)]
    assert main(argv + ["--no-progress", "--limit", "2", *extra]) == 0
    return json.loads(out.read_text())


def test_authors_protocol_end_to_end(lisa, tmp_path):
    res = _eval(lisa, tmp_path / "b.json", "--protocol", "authors", "--max-new-tokens", "4")
    assert res["protocol"] == "authors" and res["cells"] == [1024, 1024] and res["upsample"] == "nearest"
    assert res["threshold"] == 0.5 and res["refine"] == "none" and res["max_new_tokens"] == 4
    dataset = open_dataset("refcoco", str(lisa), "val")
    for k, rec in enumerate(res["samples"]):
        expr = dataset[k].meta["expression"]
        assert rec["prompt"] in {t.format(expr) for t in AUTHORS_QUESTIONS}
    again = _eval(lisa, tmp_path / "c.json", "--protocol", "authors", "--max-new-tokens", "4")
    assert [r["prompt"] for r in again["samples"]] == [r["prompt"] for r in res["samples"]]
    assert [r["iou"] for r in again["samples"]] == [r["iou"] for r in res["samples"]]


def test_authors_protocol_answer_budget_and_sam_authors(lisa, tmp_path):
    sam = tmp_path / "sam_vit_tiny.pth"
    torch.save(load_file(str(SAM_TINY)), sam)
    res = _eval(lisa, tmp_path / "s.json", "--protocol", "authors", "--refine", f"sam-authors:{sam}")
    assert res["max_new_tokens"] == 1024 and res["refine"] == f"sam-authors:{sam}"
    assert len(res["samples"]) == 2 and all(r["union"] >= r["intersection"] for r in res["samples"])


def test_stamp_protocol_is_the_default_and_unchanged(lisa, tmp_path):
    res = _eval(lisa, tmp_path / "d.json", "--max-new-tokens", "4")
    dataset = open_dataset("refcoco", str(lisa), "val")
    assert res["protocol"] == "stamp" and res["upsample"] == "prob"
    assert [r["prompt"] for r in res["samples"]] == [dataset[k].turns[0].text for k in range(2)]


def test_template_choice_is_seeded_per_expression():
    proto = get_protocol("authors")
    from stamp.data.sample import StampSample, Turn

    def sample(i):
        return StampSample(
            f"s{i}",
            "x.png",
            [Turn("user", "q"), Turn("assistant", "<|seg|>")],
            [None],
            meta={"expression": "the red circle"},
        )

    picks = [proto.question(sample(i), i, seed=0).turns[0].text for i in range(60)]
    assert picks == [proto.question(sample(i), i, seed=0).turns[0].text for i in range(60)]
    assert len(set(picks)) == len(AUTHORS_QUESTIONS)  # all six are drawn
    assert picks != [proto.question(sample(i), i, seed=1).turns[0].text for i in range(60)]
    with pytest.raises(ValueError, match="referring expression"):
        proto.question(StampSample("v", "x.png", [Turn("user", "q"), Turn("assistant", "a")]), 0, 0)
