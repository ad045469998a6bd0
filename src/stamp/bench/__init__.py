"""`stamp bench`: how fast STAMP is on a user's model or a real-size preset, measured in one process.

Parts (modules):
    mask_pass  STAMP's mask pass (`decode_step` on the cached prompt) vs. the same mask without the
               cache (`stamp_forward`) vs. the autoregressive one-token-per-cell baseline;
    request    a request's stages (vision, prompt pass, decode, mask pass, ...), a second question on
               the same image, batch throughput;
    train_step the training step (`--parts train`): samples/s and peak memory;
    flops      analytic FLOP counts and the same-run matmul reference;
    presets    random models with the published Qwen2-VL / Qwen2.5-VL dimensions;
    timing     median/spread timing and peak memory; setup: models, threads, machine;
    runner     settings from the options, one run of everything -> the JSON document; report: tables.

The JSON document (schema "stamp-bench/1") is described field by field in docs/PERFORMANCE.md.
Developer tools (profilers, loader and data benchmarks) are scripts in benchmarks/.
"""

__all__ = ["SCHEMA", "BenchSettings", "run_bench"]


def __getattr__(name: str):
    """Lazy exports: `import stamp.bench` stays light (no torch) until a name is used."""
    if name in __all__:
        from stamp.bench import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'stamp.bench' has no attribute {name!r}")
