"""The authors' SAM procedure (`sam-authors`) against their code run on the original segment-anything.

The reference (tests/refine/fixtures/sam_tiny_reference.safetensors, made by make_sam_fixtures.py) ran
their mask prompt, their point sampling after torch.manual_seed(7) and their three single-mask passes
on a tiny random SAM.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from stamp.refine import RefineResult, build_refiner
from stamp.refine.sam_authors import SamAuthorsRefiner, authors_mask_prompt, authors_points

FIXTURES = Path(__file__).parent / "fixtures"
ATOL = 2e-5  # float32 round-off between the two implementations (measured: <= 7e-6)
FED_BACK_ATOL = 5e-4
"""Passes 1 and 2 take the previous pass's logits as their mask prompt, so round-off that depends on the
CPU's vector kernels is amplified there (measured up to 1.2e-4 on an AMD EPYC, on 5 of 1,024 values);
the masks themselves are compared exactly below."""
SEED = 7  # the reference's torch.manual_seed


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURES / "sam_tiny_reference.safetensors"))


@pytest.fixture(scope="module")
def refiner(tmp_path_factory) -> SamAuthorsRefiner:
    path = tmp_path_factory.mktemp("sam_pth") / "sam_tiny.pth"
    torch.save(load_file(str(FIXTURES / "sam_tiny_original.safetensors")), path)
    return SamAuthorsRefiner(path, seed=SEED)


def _coarse(reference) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    image = reference["image"].numpy()
    mask = reference["authors_coarse"].numpy().astype(bool)
    probs = np.zeros((3, 5), dtype=np.float32)  # only validated by this refiner
    return image, probs, mask


def test_reproduces_the_authors_procedure(refiner, reference):
    image, probs, mask = _coarse(reference)
    trace = refiner.run(image, mask)
    np.testing.assert_array_equal(trace.points_xy, reference["authors_coords"].numpy())
    np.testing.assert_array_equal(trace.labels, reference["authors_labels"].numpy())
    torch.testing.assert_close(trace.mask_input[0], reference["authors_mask_input"], atol=1e-6, rtol=0)
    assert len(trace.low_res) == 3
    for i, low_res in enumerate(trace.low_res):
        torch.testing.assert_close(
            low_res,
            reference[f"authors_low_res_{i}"],
            atol=ATOL if i == 0 else FED_BACK_ATOL,
            rtol=0,
            msg=lambda m, i=i: f"pass {i}: {m}",
        )
    torch.testing.assert_close(trace.iou, reference["authors_iou"], atol=ATOL, rtol=0)
    expected = reference["authors_masks"][0].bool().numpy()
    np.testing.assert_array_equal(trace.mask, expected)
    out = refiner.refine(image, probs, mask)
    assert isinstance(out, RefineResult) and not out.used_fallback
    np.testing.assert_array_equal(out.mask, expected)
    assert out.score == pytest.approx(np.count_nonzero(expected & mask) / np.count_nonzero(expected | mask))


def test_feedback_passes_change_the_result(refiner, reference):
    """Without the two feedback passes the mask differs: the reference checks them, not just pass 0."""
    image, _, mask = _coarse(reference)
    one_pass = SamAuthorsRefiner(refiner.model_dir, seed=SEED, passes=0).run(image, mask)
    assert len(one_pass.low_res) == 1
    assert (one_pass.low_res[0] - reference["authors_low_res_2"]).abs().max() > 1e-2


def test_mask_prompt_matches_theirs_including_the_padding_bug(reference):
    for case in ("square", "exact"):  # no padding; already at the mask size (their /255 quirk)
        ours = authors_mask_prompt(reference[f"logits_{case}_in"].numpy().astype(bool), 32)
        torch.testing.assert_close(ours[0], reference[f"logits_{case}"], atol=1e-6, rtol=0, msg=case)
    mask = reference["authors_coarse"].numpy().astype(bool)  # 45 x 70 -> 21 x 32 inside a 32 x 32 prompt
    prompt = authors_mask_prompt(mask, 32)[0, 0]
    logit = float(np.log(0.999 / 0.001))
    assert torch.allclose(prompt[21:], torch.tensor(logit))  # their -1 wrapped to 255: "object"
    fixed = authors_mask_prompt(mask, 32, fix_padding=True)[0, 0]
    assert torch.allclose(fixed[21:], torch.tensor(-logit))
    torch.testing.assert_close(fixed[:21], prompt[:21])
    big = authors_mask_prompt(np.ones((300, 517), dtype=bool), 256)[0, 0]  # the released SAM's 256
    assert big.shape == (256, 256) and torch.allclose(
        big, torch.tensor(logit)
    )  # int(300 * 256 / 517 + 0.5) = 149


def test_points_follow_their_rules():
    mask = np.zeros((40, 60), dtype=bool)
    mask[5:25, 10:40] = True
    points, labels = authors_points(mask, 10, torch.Generator().manual_seed(3))
    assert points.shape == (20, 2) and points.dtype == np.float64 and labels.tolist() == [1] * 10 + [0] * 10
    assert np.array_equal(points, points.round())  # pixel indices
    xs, ys = points[:, 0].astype(int), points[:, 1].astype(int)
    assert mask[ys[:10], xs[:10]].all() and not mask[ys[10:], xs[10:]].any()
    assert len({(x, y) for x, y in zip(xs[:10], ys[:10])}) == 10  # without replacement
    assert len({(x, y) for x, y in zip(xs[10:], ys[10:])}) == 10
    # Their sampling: first 10 of torch.randperm over raster-order candidates, global RNG after manual_seed.
    torch.manual_seed(3)
    candidates = np.flatnonzero(mask)
    first = candidates[torch.randperm(candidates.size)[:10].numpy()]
    np.testing.assert_array_equal(ys[:10] * 60 + xs[:10], first)
    # Fewer candidates than points: all of them; a full mask has no negatives.
    tiny = np.zeros((40, 60), dtype=bool)
    tiny[0, :4] = True
    _, labels = authors_points(tiny, 10, torch.Generator().manual_seed(0))
    assert labels.tolist() == [1] * 4 + [0] * 10
    _, labels = authors_points(np.ones((5, 5), dtype=bool), 10, torch.Generator().manual_seed(0))
    assert labels.tolist() == [1] * 10


def test_seeded_per_call(refiner, reference):
    image, probs, mask = _coarse(reference)
    a, b = refiner.sample_points(mask), refiner.sample_points(mask)
    np.testing.assert_array_equal(a[0], b[0])  # re-seeded on every call
    other = refiner.sample_points(mask, seed=SEED + 1)
    assert not np.array_equal(a[0][:10], other[0][:10]) and not np.array_equal(a[0][10:], other[0][10:])
    r1, r2 = refiner.refine(image, probs, mask), refiner.refine(image, probs, mask)
    np.testing.assert_array_equal(r1.mask, r2.mask)
    masks = {refiner.refine(image, probs, mask, seed=s).mask.tobytes() for s in range(4)}
    assert len(masks) > 1  # the seed reaches SAM: other points, other masks


def test_empty_mask_and_validation(refiner, reference, monkeypatch):
    image, probs, mask = _coarse(reference)
    calls = []
    monkeypatch.setattr(refiner, "_embed", lambda img: calls.append(img))
    out = refiner.refine(image, probs, np.zeros_like(mask))
    assert not out.mask.any() and out.score == 1.0 and calls == []
    with pytest.raises(ValueError, match="does not match"):
        refiner.refine(image, probs, mask[:-1])


def test_build_refiner_default_seed_is_reproducible(refiner, reference):
    image, probs, mask = _coarse(reference)
    a = build_refiner(f"sam-authors:{refiner.model_dir}")
    b = build_refiner(f"sam-authors:{refiner.model_dir}")
    assert a.seed == 0 and "SamAuthorsRefiner" in repr(a)
    np.testing.assert_array_equal(a.refine(image, probs, mask).mask, b.refine(image, probs, mask).mask)
