import pytest

TINY_OVERRIDES = [
    "model.hidden_size=32",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.num_kv_heads=1",
    "model.intermediate_size=64",
    "model.mrope_section=[2,3,3]",
    "model.vision_depth=1",
    "model.vision_embed_dim=32",
    "model.vision_heads=2",
    "model.min_cells=4",
    "model.max_cells=9",
    "data.image_size_range=[64,96]",
    "data.val_samples=3",
    "optim.batch_size=2",
    "optim.warmup_steps=1",
    "run.precision=fp32",
    "run.eval_every=0",
    "run.log_every=1",
    "run.threads=1",
]


@pytest.fixture
def tiny_overrides(tmp_path):
    return TINY_OVERRIDES + [f"run.out_dir={tmp_path / 'run'}"]
