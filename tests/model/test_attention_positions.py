import torch

from stamp.model.attention import build_hybrid_attention_mask, to_backend_mask
from stamp.model.positions import placeholder_position_ids


def _mask(key_block, limit, mode="hybrid"):
    kb = torch.tensor([key_block])
    idx = torch.arange(kb.shape[1])[None]
    return build_hybrid_attention_mask(kb, kb, idx, torch.tensor([limit]), mode)[0, 0].int().tolist()


def test_hybrid_mask_hand_checked():
    # 3 text tokens (seg at index 2) + 2 placeholders of block 1
    assert _mask([0, 0, 0, 1, 1], [0, 1, 2, 2, 2]) == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1],
    ]


def test_causal_ablation_mask():
    assert _mask([0, 0, 0, 1, 1], [0, 1, 2, 2, 2], "causal")[3:] == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]


def test_two_blocks_left_padding_and_isolation():
    # pad, text x4 (seg at 2 and at 4), block 1 (2 cells) sees up to index 2, block 2 sees up to 4
    m = _mask([-1, 0, 0, 0, 0, 1, 1, 2, 2], [0, 1, 2, 3, 4, 2, 2, 4, 4])
    assert m[0] == [1, 0, 0, 0, 0, 0, 0, 0, 0]  # padding query sees only itself
    assert [row[0] for row in m[1:]] == [0] * 8  # nobody sees the padding key
    assert m[4][:5] == [0, 1, 1, 1, 1] and m[4][5:] == [0, 0, 0, 0]  # text never sees placeholders
    assert m[5] == [0, 1, 1, 0, 0, 1, 1, 0, 0]  # block 1: text up to its seg + itself
    assert m[7] == [0, 1, 1, 1, 1, 0, 0, 1, 1]  # block 2: never block 1


def test_backend_masks():
    allowed = torch.tensor([[[[True, False]]]])
    assert to_backend_mask(allowed, "sdpa").dtype == torch.bool
    eager = to_backend_mask(allowed, "eager")
    assert eager[0, 0, 0, 0] == 0 and eager[0, 0, 0, 1] == torch.finfo(torch.float32).min
    try:
        to_backend_mask(allowed, "flash_attention_2")
    except ValueError as e:
        assert "hybrid" in str(e)
    else:
        raise AssertionError("flash attention must be refused")


def test_placeholder_positions():
    grid = placeholder_position_ids(10, (2, 3), "grid")
    assert grid.tolist() == [[10] * 6, [10, 10, 10, 11, 11, 11], [10, 11, 12, 10, 11, 12]]
    text = placeholder_position_ids(10, (2, 3), "text")
    assert text.tolist() == [list(range(10, 16))] * 3
