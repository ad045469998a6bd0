"""A tiny model for tests that run training configs end to end (kept in one place)."""

TINY_MODEL = [
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
    "optim.batch_size=2",
    "optim.warmup_steps=1",
    "run.precision=fp32",
    "run.threads=1",
]
