"""The CPU-side plan of the training step: where every token and placeholder goes."""

import pytest
import torch
from test_packing import _batch


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


def test_seg_without_an_image_is_a_clear_error(tiny_model):
    proc = tiny_model.processor
    ids = proc._text_ids("no image here ") + [proc.seg_token_id]
    with pytest.raises(ValueError, match="no image before it"):
        tiny_model.plan_batch(
            torch.tensor([ids]),
            torch.ones(1, len(ids), dtype=torch.long),
            torch.zeros(1, len(ids), dtype=torch.long),
            None,
        )
