"""End-to-end latency of one request, stage by stage, and throughput at several batch sizes.

A request = load an image file, `StampPredictor.set_image` (preprocessing + vision tower), `chat` with the
answer forced to start with `<|seg|>` (so a random model also predicts a mask), then the stages that
`StampResult.timings` reports: prefill, answer decode, mask pass, postprocess (upsample + threshold) and
refinement (the predictor's "guided" refiner). A second query on the same image follows: it must not
run the vision tower (`StampPredictor.vision_calls` stays the same), so its vision time is 0.

Images are SynthRef val scenes written to PNG files in a temporary folder (so "image load" is a real
file decode), at SynthRef's own sizes or, with `image_sides`, resized to squares of each side (one record
per side: 448 -> 16x16 = 256 cells, 896 -> 1,024 cells where the processor keeps the size). Each record
also gives the first query's peak memory and its answer decode time per decoded token. Answers are capped at `max_new_tokens` free tokens after the forced `<|seg|>`; with random
weights the answer rarely ends earlier, so decode time is that of about `max_new_tokens` steps.

Throughput: `StampPredictor.predict_batch` on B distinct images at a time (vision per image, then one
left-padded generation for the batch, refinement included), over the same max(batch sizes) images at
every B; images/s = those images / median wall time of the batches that cover them.

Each request record also holds `stages`: the first query's vision, prefill, decode and mask stages
against their bounds at the matmul rate and memory bandwidth measured in the same process, on the same
device, in the record's dtype (`stamp.bench.stages`; the references are in `bounds_reference`). The
vision stage's time includes the processor's preprocessing, as `StampResult.timings` reports it.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from stamp.bench.ceilings import stage_ceilings
from stamp.bench.flops import matmul_peak
from stamp.bench.mask_pass import DTYPES
from stamp.bench.stages import STAGE_NAMES, StageWork, memory_bandwidth, request_work, stage_bounds
from stamp.bench.timing import MemoryProbe, synchronize

STAGES = ("image_load", "vision", "prefill", "decode", "mask", "postprocess", "refine")


@dataclass
class RequestSettings:
    """What the request and batch benchmarks run."""

    dtypes: list[str] = field(default_factory=lambda: ["fp32", "bf16"])
    requests: int = 5
    """Timed requests (each on its own image) per dtype; the median of each stage is reported."""
    warmup: int = 1
    max_new_tokens: int = 16
    refine: str = "guided"
    batch_sizes: list[int] = field(default_factory=lambda: [1, 4, 8])
    batch_repeats: int = 3
    image_size: tuple[int, int] = (224, 448)
    """SynthRef image side range in pixels (the processor resizes to the model's cell budget)."""
    image_sides: list[int] | None = None
    """Square images of these sides instead (one request record per side); the warm-up uses the first."""
    matmul_shapes: list[tuple[int, int, int]] = field(
        default_factory=lambda: [(1024, 1024, 1024), (2048, 2048, 2048)]
    )
    """`torch.mm` shapes whose best rate is the stages' compute reference (`stamp.bench.flops.matmul_peak`)."""
    bandwidth_bytes: int = 512 * 2**20
    """Size of the tensor whose copy and sum give the decode stage's bandwidth reference."""


def _scene_files(
    count: int, folder: Path, size_range: tuple[int, int], side: int | None = None
) -> list[tuple[Path, str]]:
    """`count` SynthRef val scenes saved as PNG (resized to side x side if given), with their first
    user request."""
    from PIL import Image

    from stamp.data.synthref import SynthRef

    ds = SynthRef("val", image_size_range=size_range, length=max(count, 1))
    out = []
    for i in range(count):
        sample = ds[i]
        path = folder / f"scene_{i:03d}{'' if side is None else f'_{side}'}.png"
        image = sample.load_image()
        if side is not None:
            image = image.resize((side, side), Image.Resampling.BICUBIC)
        image.save(path)
        prompt = next((t.text for t in sample.turns if t.role == "user"), "Segment the object.")
        out.append((path, prompt))
    return out


def _median_ms(values: list[float]) -> float:
    return 1e3 * statistics.median(values) if values else 0.0


def decode_steps(result) -> int:
    """Decode forwards of an answer that starts with the forced `<|seg|>` (fed in the mask pass): every
    later token is fed but the last one of an answer cut at its length limit."""
    fed = len(result.token_ids) - (1 if result.finish_reason == "length" else 0)
    return max(0, fed - 1)


def reference_rates(device, dtype: torch.dtype, settings: RequestSettings) -> dict:
    """This run's references for the stage bounds: the best `torch.mm` GFLOP/s in `dtype` and the memory
    bandwidth, measured on `device`."""
    peak = matmul_peak(dtype, device, settings.matmul_shapes, repeats=3)
    bw = memory_bandwidth(device, settings.bandwidth_bytes)
    return {
        "matmul_dtype": peak.dtype,
        "matmul_gflops": peak.best_gflops,
        "matmul_best_shape": list(peak.best_shape),
        "matmul_by_shape": peak.by_shape,
        "bandwidth_gbs": bw.best_gbs,
        "bandwidth_method": bw.method,
        "bandwidth_by_method": bw.by_method,
        "bandwidth_bytes": bw.bytes,
    }


def request_record(
    predictor,
    files: list[tuple[Path, str]],
    settings: RequestSettings,
    dtype: str,
    references: dict | None = None,
) -> dict:
    """The latency breakdown (median ms per stage) of first and second queries on `files`; with
    `references` (`reference_rates`), the first query's stages against their bounds."""
    from stamp.imaging import load_image

    device = predictor.model.device
    first: dict[str, list[float]] = {s: [] for s in (*STAGES, "total", "wall")}
    second: dict[str, list[float]] = {s: [] for s in (*STAGES, "total")}
    second_vision_calls, answer_tokens, masks, cells, peaks, per_token = 0, [], 0, [], [], []
    works: list[StageWork] = []
    for k, (path, prompt) in enumerate(files):
        timed = k >= settings.warmup
        probe = MemoryProbe(device)
        probe.start()
        synchronize(device)
        t0 = time.perf_counter()
        image = load_image(path)
        t_load = time.perf_counter() - t0
        predictor.set_image(image)
        res = predictor.chat(prompt, answer_prefix="<|seg|>", max_new_tokens=settings.max_new_tokens)
        synchronize(device)
        wall = time.perf_counter() - t0
        peak = probe.stop()
        calls = predictor.vision_calls
        if timed:
            works.append(_work(predictor, prompt, res))
        res2 = predictor.chat(
            "And what else is there?", answer_prefix="<|seg|>", max_new_tokens=settings.max_new_tokens
        )
        extra_calls = predictor.vision_calls - calls
        if not timed:
            continue
        second_vision_calls += extra_calls
        for stage in STAGES[1:]:
            first[stage].append(res.timings.get(stage, 0.0))
            # the second query reuses the image's features: its vision time is what it really ran
            value = 0.0 if stage == "vision" and extra_calls == 0 else res2.timings.get(stage, 0.0)
            second[stage].append(value)
        first["image_load"].append(t_load)
        second["image_load"].append(0.0)
        first["total"].append(sum(first[s][-1] for s in STAGES))
        second["total"].append(sum(second[s][-1] for s in STAGES))
        first["wall"].append(wall)
        answer_tokens.append(len(res.token_ids))
        # decode steps: every answer token but the forced <|seg|> (a mask step) and the last (not fed)
        per_token.append(res.timings.get("decode", 0.0) / max(1, len(res.token_ids) - 2))
        if peak.peak_mb is not None:
            peaks.append(peak.peak_mb)
        masks += len(res.masks)
        if res.masks:
            cells.append(res.masks[0].patch_logits.size)
    record = {
        "dtype": dtype,
        "requests": len(answer_tokens),
        "first_query_ms": {s: _median_ms(v) for s, v in first.items()},
        "second_query_ms": {s: _median_ms(v) for s, v in second.items()},
        "second_query_vision_calls": second_vision_calls,
        "answer_tokens": statistics.median(answer_tokens) if answer_tokens else 0,
        "masks_per_request": masks / max(1, len(answer_tokens)),
        "cells": statistics.median(cells) if cells else 0,
        "decode_ms_per_token": _median_ms(per_token),
        "peak_mem_mb": statistics.median(peaks) if peaks else None,
        "peak_mem_method": peak.method if files else "unavailable",
        "max_new_tokens": settings.max_new_tokens,
        "refine": settings.refine,
    }
    if references is not None and works:
        work = {k: statistics.median(getattr(w, k) for w in works) for k in StageWork.__dataclass_fields__}
        ms = {s: record["first_query_ms"][s] for s in STAGE_NAMES}
        ceilings = stage_ceilings(predictor.model, works[0], DTYPES[dtype])
        record["stages"] = stage_bounds(
            ms, work, references["matmul_gflops"], references["bandwidth_gbs"], ceilings
        )
        record["stages_geometry"] = {
            "prompt_tokens": statistics.median(w.prompt_tokens for w in works),
            "decode_steps": statistics.median(w.decode_steps for w in works),
            "patches": statistics.median(w.patches for w in works),
        }
        record["bounds_reference"] = dict(references)
    return record


def _work(predictor, prompt: str, res) -> StageWork:
    """The analytic work of the first query just answered on the predictor's current image."""
    gh, gw = predictor.grid_hw
    merge = predictor.model.merge_size
    # the prompt pass: the text, and the image as <|vision_start|> + its cells + <|vision_end|>
    length = predictor.prompt_tokens(prompt) + gh * gw + 2
    cells = res.masks[0].patch_logits.size if res.masks else 0
    return request_work(
        predictor.model, (gh * merge, gw * merge), length, decode_steps(res), cells, masks=bool(res.masks)
    )


def batch_records(
    predictor, files: list[tuple[Path, str]], settings: RequestSettings, dtype: str
) -> list[dict]:
    """images/s of `predict_batch` for each batch size, every size on the SAME images: the first
    max(batch_sizes) of `files` (cycled if fewer), in consecutive batches of B. So batch 1 and batch 8
    do the same work; images differ in size (SynthRef's range), and timing batch 1 on one image alone
    would credit or charge it with that image's size."""
    from stamp.imaging import load_image

    if not settings.batch_sizes:
        return []
    device = predictor.model.device
    loaded = [(load_image(p), prompt) for p, prompt in files]
    pool = [loaded[i % len(loaded)] for i in range(max(settings.batch_sizes))]
    records = []
    for bsz in settings.batch_sizes:
        chunks = [pool[i : i + bsz] for i in range(0, len(pool), bsz)]
        runs = []
        for r in range(settings.warmup + settings.batch_repeats):
            synchronize(device)
            t0 = time.perf_counter()
            for chunk in chunks:
                predictor.predict_batch(
                    chunk, answer_prefix="<|seg|>", max_new_tokens=settings.max_new_tokens
                )
            synchronize(device)
            if r >= settings.warmup:
                runs.append(time.perf_counter() - t0)
        sec = statistics.median(runs)
        records.append(
            {
                "dtype": dtype,
                "batch_size": bsz,
                "images": len(pool),
                "images_per_s": len(pool) / sec,
                "ms_per_batch": sec * 1e3 / len(chunks),
                "min_ms_per_batch": min(runs) * 1e3 / len(chunks),
                "max_ms_per_batch": max(runs) * 1e3 / len(chunks),
                "repeats": len(runs),
            }
        )
    base = next((r["images_per_s"] for r in records if r["batch_size"] == 1), None)
    for r in records:
        r["speedup_vs_batch_1"] = r["images_per_s"] / base if base else None
    return records


def run_requests(model, processor, settings: RequestSettings, log=print) -> tuple[list[dict], list[dict]]:
    """(request records, batch records), one request record per dtype and one batch record per
    (dtype, batch size). The model is cast to each dtype in turn and back at the end."""
    from stamp.inference import StampPredictor

    original = model.get_input_embeddings().weight.dtype
    n_files = max(settings.warmup + settings.requests, max(settings.batch_sizes, default=1))
    requests, batches = [], []
    with tempfile.TemporaryDirectory(prefix="stamp-bench-") as tmp:
        files = _scene_files(n_files, Path(tmp), settings.image_size)
        sides = settings.image_sides or [None]
        per_side = (
            {  # the warm-up runs on the first size only
                side: _scene_files(
                    settings.warmup * (i == 0) + settings.requests, Path(tmp), settings.image_size, side
                )
                for i, side in enumerate(sides)
            }
            if settings.image_sides
            else {None: files[: settings.warmup + settings.requests]}
        )
        try:
            for name in settings.dtypes:
                model.to(DTYPES[name])
                predictor = StampPredictor(model, processor, refine=settings.refine)
                references = reference_rates(model.device, DTYPES[name], settings)
                log(
                    f"[request] {name} references: matmul {references['matmul_gflops']:.1f} GFLOP/s, "
                    f"bandwidth {references['bandwidth_gbs']:.1f} GB/s"
                )
                for i, side in enumerate(sides):
                    warm = settings if i == 0 or side is None else replace(settings, warmup=0)
                    rec = request_record(predictor, per_side[side], warm, name, references)
                    rec["image_side"] = side
                    requests.append(rec)
                    t = rec["first_query_ms"]
                    log(
                        f"[request] {name}{'' if side is None else f' {side}x{side}'}: "
                        + ", ".join(f"{s} {t[s]:.1f}" for s in (*STAGES, "total"))
                        + f" ms; {rec['cells']} cells, decode {rec['decode_ms_per_token']:.1f} ms/token, "
                        f"peak {rec['peak_mem_mb'] or 0:.0f} MB; "
                        f"second query total {rec['second_query_ms']['total']:.1f} ms, "
                        f"vision calls {rec['second_query_vision_calls']}"
                    )
                for b in batch_records(predictor, files, settings, name):
                    batches.append(b)
                    log(
                        f"[batch] {name} B={b['batch_size']}: {b['images_per_s']:.2f} images/s "
                        f"(x{b['speedup_vs_batch_1'] or 0:.2f} vs B=1)"
                    )
        finally:
            model.to(original)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return requests, batches
