"""The CPU-side plan of the training step: where every token and placeholder goes."""

import pytest
import torch
from helpers import random_image
from test_packing import _batch

from stamp.model.batch_plan import image_mrope_positions
from stamp.tiny import tiny_processor


def test_plan_places_every_token_once_and_blocks_after_their_conversation(tiny_model):
    batch = _batch(tiny_model)  # 4 samples; sample 0 has one <|seg|>, sample 2 has two, 1 and 3 none
    plan = tiny_model.plan_batch(
        batch["input_ids"],
        batch["attention_mask"],
        batch["mm_token_type_ids"],
        batch["image_grid_thw"],
        batch["labels"],
        pack=True,
    )
    B, L = batch["input_ids"].shape
    n_cells = sum(g[0] * g[1] for g in plan.grids.tolist())
    pad = B * L + n_cells
    used = plan.src_index[plan.src_index != pad].tolist()
    real = [b * L + i for b in range(B) for i in range(L) if batch["attention_mask"][b, i]]
    assert sorted(used) == sorted(real + list(range(B * L, B * L + n_cells)))  # each exactly once
    assert [k.sample for k in plan.blocks] == [0, 2, 2] and plan.num_masks == 3
    assert plan.n_max == max(g[0] * g[1] for g in plan.grids.tolist())
    for j, blk in enumerate(plan.blocks):
        r, o = plan.placement[blk.sample]
        cols = plan.ph_cols[plan.ph_out // plan.n_max == j]
        assert (plan.key_block[r, cols] >= 1).all() and (plan.segment[r, cols] == blk.sample).all()
        # each placeholder may see the conversation up to its own <|seg|>, which sits there in the row
        seg_col = int(plan.limit[r, cols[0]])
        assert plan.src_index[r, seg_col] == blk.sample * L + blk.seg_index
        assert (plan.limit[r, cols] == seg_col).all() and (cols > seg_col).all()
    # text loss: exactly the labelled next tokens, predicted from the token before them
    labels = batch["labels"]
    assert plan.text_targets.numel() == sum(
        int((labels[b, batch["attention_mask"][b].bool()][1:] != -100).sum()) for b in range(B)
    )
    assert (plan.text_targets != -100).all()


def test_plan_moves_in_one_piece_and_keeps_values(tiny_model):
    batch = _batch(tiny_model)
    plan = tiny_model.plan_batch(
        batch["input_ids"], batch["attention_mask"], batch["mm_token_type_ids"], batch["image_grid_thw"]
    )
    assert plan.to("cpu") is plan  # nothing to move
    moved = plan.to("meta")
    for name in plan._DEVICE_FIELDS:
        assert getattr(moved, name).shape == getattr(plan, name).shape
        assert getattr(moved, name).device.type == "meta"
    assert moved.text_targets.numel() == 0  # no labels given: no text loss positions


def test_seg_without_an_image_is_a_clear_error(tiny_model, tiny_processor):
    proc = tiny_processor
    ids = proc._text_ids("no image here ") + [proc.seg_token_id]
    with pytest.raises(ValueError, match="no image before it"):
        tiny_model.plan_batch(
            torch.tensor([ids]),
            torch.ones(1, len(ids), dtype=torch.long),
            torch.zeros(1, len(ids), dtype=torch.long),
            None,
        )


def _two_image_batch(tiny_model):
    proc = tiny_processor()
    a, b = proc.encode_image(random_image(224, 224, 1)), proc.encode_image(random_image(280, 168, 2))

    def block(enc):
        return [proc.vision_start_id] + [proc.image_token_id] * enc.num_cells + [proc.vision_end_id]

    ids = proc._text_ids("compare ") + block(a) + proc._text_ids("with ") + block(b) + proc._text_ids("ok")
    ids = torch.tensor([ids])
    return (
        ids,
        torch.ones_like(ids),
        (ids == proc.image_token_id).long(),
        torch.stack([a.grid_thw, b.grid_thw]),
    )


@pytest.mark.parametrize("padding", ["right", "left"])
def test_positions_match_transformers_rope_index(tiny_model, padding):
    """The plan's own M-RoPE ids equal transformers' `get_rope_index` on every real token: padded
    batches on either side, several images in one sample, samples without images."""
    batch = _batch(tiny_model)
    ids, attn, mm = batch["input_ids"], batch["attention_mask"], batch["mm_token_type_ids"]
    if padding == "left":  # move each row's padding to its front
        order = torch.argsort(attn, dim=1, stable=True)
        ids, attn, mm = ids.gather(1, order), attn.gather(1, order), mm.gather(1, order)
        assert not bool(attn[:, -1].eq(0).any())
    cases = [(ids, attn, mm, batch["image_grid_thw"]), _two_image_batch(tiny_model)]
    text_only = ids.clone()
    cases.append((text_only, attn, torch.zeros_like(mm), None))
    merge = tiny_model.merge_size
    for ids_, attn_, mm_, grid in cases:
        cells = [] if grid is None else [(int(g[1]) // merge, int(g[2]) // merge) for g in grid]
        got = image_mrope_positions(attn_.tolist(), mm_.tolist(), cells)
        want = tiny_model.conversation_positions(ids_, attn_, mm_ if grid is not None else None, grid)
        real = attn_.bool()
        assert torch.equal(got[:, real], want[:, real])
        assert got.shape == want.shape


def test_image_token_count_must_match_the_images():
    with pytest.raises(ValueError, match="image tokens in the batch but its images have 6 cells"):
        image_mrope_positions([[1, 1, 1, 1]], [[0, 1, 1, 0]], [(2, 3)])
    with pytest.raises(ValueError, match="not video"):
        image_mrope_positions([[1, 1]], [[0, 2]], [])
