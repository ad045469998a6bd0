"""Tiny random SAM / SAM 2 checkpoints written to a temporary directory (built once per session)."""

from __future__ import annotations

import pytest
import torch
import transformers


def _tiny_sam():
    cfg = transformers.SamConfig(
        vision_config=dict(
            hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=2, image_size=128,
            patch_size=16, window_size=4, global_attn_indexes=[1], num_pos_feats=16, mlp_dim=64,
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=128, patch_size=16, mask_input_channels=8),
        mask_decoder_config=dict(
            hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=32
        ),
    )  # fmt: skip
    return transformers.SamModel(cfg)


def _tiny_sam2():
    backbone = transformers.Sam2HieraDetConfig(
        hidden_size=8, num_attention_heads=1, image_size=[128, 128], blocks_per_stage=[1, 1, 2, 1],
        embed_dim_per_stage=[8, 16, 32, 64], num_attention_heads_per_stage=[1, 1, 2, 2],
        window_size_per_stage=[4, 4, 4, 4], global_attention_blocks=[3],
        window_positional_embedding_background_size=[2, 2],
    )  # fmt: skip
    cfg = transformers.Sam2Config(
        vision_config=dict(
            backbone_config=backbone.to_dict(), backbone_channel_list=[64, 32, 16, 8],
            backbone_feature_sizes=[[32, 32], [16, 16], [8, 8]], fpn_hidden_size=32,
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=128, patch_size=16, mask_input_channels=8),
        mask_decoder_config=dict(
            hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=32
        ),
    )  # fmt: skip
    return transformers.Sam2Model(cfg)


@pytest.fixture(scope="session")
def tiny_sam_dir(tmp_path_factory):
    """A directory holding a ~100k-parameter random SamModel (128 px input frame, 32 px mask input)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_sam")
    _tiny_sam().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_sam2_dir(tmp_path_factory):
    """A directory holding a tiny random Sam2Model, or skip when transformers has no SAM 2."""
    if not hasattr(transformers, "Sam2Model"):
        pytest.skip("this transformers has no Sam2Model")
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny_sam2")
    _tiny_sam2().save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """These tensors are tiny; on shared cores extra intra-op threads only add contention."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
