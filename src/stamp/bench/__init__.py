"""`stamp bench`: how fast STAMP's one-pass mask is, measured side by side in one process.

Parts (modules):
    mask_pass  STAMP's mask pass (prefix KV cache reused) vs. the same without the cache vs. the
               autoregressive patch-token baseline, for N placeholders, on the model's own API;
    request    per-request latency by stage, a second query on the same image, batch throughput;
    train_step the training step (`--parts train`): forward + backward + AdamW, samples/s and memory;
    flops      analytic FLOP counts and the same-run matmul reference;
    presets    random models with the published Qwen2-VL / Qwen2.5-VL dimensions (`--preset qwen2-vl-2b`);
    timing     median/spread timing and peak memory; setup: models, threads, machine;
    runner     one run of everything -> the JSON document; report: tables and JSON output;
    cli        the `stamp bench` subcommand (`add_parser`, `cmd_bench`, `main`).

JSON document (schema "stamp-bench/1"; docs/PERFORMANCE.md has the full field list). Times are
milliseconds (median of the repeats), memory MiB:
    schema, command                 "stamp-bench/1", the command line that produced it
    machine                         date (UTC), cpu, cpus_allowed, torch_threads, device, gpu, torch,
                                    transformers, load_average_start / _end, ...
    model                           name, kind, random_weights, family, text dims, parameter counts
    settings                        the parameters of the run (N list, history, repeats, dtypes, ...)
    matmul[]                        per dtype: best_gflops, best_shape, by_shape
    mask_pass[]                     per (n, dtype): n, grid, dtype, history, stamp_ms, no_cache_ms,
                                    autoregressive_ms, ar_ratio (= autoregressive / stamp), cache_ratio
                                    (= no_cache / stamp), flops_fraction (of matmul[dtype]),
                                    peak_mem_mb (of the STAMP pass), autoregressive_scaled (and the
                                    per-step times when scaled), pass_matmul_fraction, mask_pass_gflop, mask_pass_gflops, matmul_gflops, ar_flops_ratio,
                                    ar_ratio_bound (autoregressive / the pass at matmul[dtype]'s rate),
                                    cache_flops_ratio, no_cache_peak_mem_mb, autoregressive_peak_mem_mb,
                                    peak_mem_method, max_abs_diff, timings{pass: median/min/max/q1/q3/...}
    request[]                       per (dtype, image side): first_query_ms{stage}, second_query_ms{stage} for stages
                                    image_load, vision, prefill, decode, mask, postprocess, refine, total
                                    (first also: wall), decode_ms_per_token, peak_mem_mb, cells, ...
    batch[]                         per (dtype, batch_size): images_per_s, ms_per_batch, speedup_vs_batch_1
    train[]                         per (grad_ckpt, batch_size): mode, cells, ms_per_step, samples_per_s,
                                    peak_mem_mb, resident_mb, peak_total_mb, trainable_params,
                                    estimate_bytes, loss, timings (or oom / skipped)
    targets[]                       the issue's targets: target, dtype, n, value, met (and bound)
"""

__all__ = ["SCHEMA", "BenchSettings", "run_bench"]


def __getattr__(name: str):
    """Lazy exports: `import stamp.bench` stays light (no torch) until a name is used."""
    if name in __all__:
        from stamp.bench import runner

        return getattr(runner, name)
    raise AttributeError(f"module 'stamp.bench' has no attribute {name!r}")
