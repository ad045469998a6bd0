"""Printing a `stamp bench` document as tables, and writing it as JSON (atomically, never overwriting).

stamp bench --report bench.json [--markdown]   # a saved run as tables
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from stamp.outputs.files import new_file_mode
from stamp.outputs.jsondoc import dumps


def check_writable(path: str | Path, force: bool) -> Path:
    """Fail before a long run if `path` exists (without `force`) or its folder cannot be made."""
    path = Path(path)
    if path.is_dir():
        raise FileExistsError(f"{path} is a directory, not a file")
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_json(doc: dict, path: str | Path, force: bool = False) -> Path:
    """Write `doc` to `path` atomically (a temporary file in the same folder, then a rename)."""
    path = check_writable(path, force)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "w") as fh:
            fh.write(dumps(doc, indent=2))
            fh.write("\n")
        if path.exists() and not force:  # appeared while we ran
            raise FileExistsError(f"{path} exists; pass --force to overwrite it")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def _table(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def _ar_cell(r: dict) -> str:
    """The baseline's ms; scaled from measured steps: 'ms (scaled from k steps: a / b ms per step)'."""
    ms = _fmt(r["autoregressive_ms"], ".1f")
    if not r.get("autoregressive_scaled"):
        return ms
    start, end = r["autoregressive_step_ms_start"], r["autoregressive_step_ms_end"]
    return f"{ms} (scaled: {r['autoregressive_steps_measured']} steps at each end, {start:.1f} / {end:.1f} ms per step)"


def mask_pass_table(doc: dict, markdown: bool = False) -> str:
    header = [
        "device", "dtype", "N", "grid", "H", "STAMP ms [min-max]", "no cache ms", "autoregr. ms",
        "AR/STAMP", "nocache/STAMP", "FLOP ratio nc/ST", "GFLOP/s", "% matmul", "% matmul, pass shapes alone", "peak MB",
    ]  # fmt: skip
    rows = []
    for r in doc.get("mask_pass", []):
        t = r["timings"]["stamp"]
        bound = r.get("pass_matmul_fraction")
        rows.append(
            [
                r["device"],
                r["dtype"],
                str(r["n"]),
                "x".join(map(str, r["grid"])),
                str(r["history"]),
                f"{t['median_ms']:.2f} [{t['min_ms']:.2f}-{t['max_ms']:.2f}]",
                _fmt(r["no_cache_ms"]),
                _ar_cell(r),
                _fmt(r["ar_ratio"], ".1f"),
                _fmt(r["cache_ratio"]),
                _fmt(r["cache_flops_ratio"]),
                _fmt(r["mask_pass_gflops"], ".1f"),
                _fmt(None if r["flops_fraction"] is None else 100 * r["flops_fraction"], ".0f"),
                _fmt(None if bound is None else 100 * bound, ".0f"),
                _fmt(r["peak_mem_mb"], ".1f"),
            ]
        )
    return _table(header, rows, markdown)


def matmul_table(doc: dict, markdown: bool = False) -> str:
    rows = [
        [m["device"], m["dtype"], "x".join(map(str, m["best_shape"])), f"{m['best_gflops']:.1f}"]
        for m in doc.get("matmul", [])
    ]
    return _table(["device", "dtype", "best shape MxKxN", "GFLOP/s"], rows, markdown)


def request_table(doc: dict, markdown: bool = False) -> str:
    stages = ["image_load", "vision", "prefill", "decode", "mask", "postprocess", "refine", "total"]
    rows = []
    for r in doc.get("request", []):
        side = r.get("image_side")
        image = f"{side}x{side}" if side else "SynthRef"
        for which in ("first_query_ms", "second_query_ms"):
            first = which.startswith("first")
            label = "1st query" if first else "2nd query, same image"
            extra = [
                _fmt(r.get("decode_ms_per_token") if first else None, ".1f"),
                _fmt(r.get("peak_mem_mb") if first else None, ".0f"),
            ]
            cells = str(int(r.get("cells") or 0))
            rows.append(
                [r["device"], r["dtype"], image, cells, label]
                + [_fmt(r[which].get(s), ".1f") for s in stages]
                + extra
            )
    header = ["device", "dtype", "image", "cells", "request"] + [f"{s} ms" for s in stages]
    return _table(header + ["decode ms/token", "peak MB"], rows, markdown)


def stages_table(doc: dict, markdown: bool = False) -> str:
    """The first query's stages against their bounds (`stamp.bench.stages`): measured ms, the work
    (GFLOP; GB read for decode), the bound at this run's reference rate, bound / measured, and the
    stage's own kernels timed alone (`stamp.bench.ceilings`) with kernels / measured."""
    rows = []
    for r in doc.get("request", []):
        if not r.get("stages"):
            continue
        side = r.get("image_side")
        image = f"{side}x{side}" if side else "SynthRef"
        ref = r["bounds_reference"]
        for stage, st in r["stages"].items():
            rate = (
                f"{ref['bandwidth_gbs']:.1f} GB/s"
                if st["bound_by"] == "bandwidth"
                else f"{ref['matmul_gflops']:.1f} GFLOP/s {ref['matmul_dtype']}"
            )
            rows.append(
                [
                    r["device"],
                    r["dtype"],
                    image,
                    stage,
                    _fmt(st["ms"], ".1f"),
                    _fmt(st["gflop"], ".4g"),
                    _fmt(st["gbyte"], ".4g"),
                    _fmt(st["bound_ms"], ".1f"),
                    rate,
                    _fmt(None if st["share"] is None else 100 * st["share"], ".0f"),
                    _fmt(st.get("ceiling_ms"), ".1f"),
                    _fmt(None if st.get("share_of_ceiling") is None else 100 * st["share_of_ceiling"], ".0f"),
                ]
            )
    header = ["device", "dtype", "image", "stage", "ms", "GFLOP", "GB read", "bound ms", "bound at"]
    return _table(header + ["% of bound", "kernels alone ms", "% of kernels alone"], rows, markdown)


def batch_table(doc: dict, markdown: bool = False) -> str:
    rows = [
        [
            b["device"],
            b["dtype"],
            str(b["batch_size"]),
            _fmt(b["images_per_s"]),
            _fmt(b["ms_per_batch"], ".1f"),
            _fmt(b["speedup_vs_batch_1"]),
        ]
        for b in doc.get("batch", [])
    ]
    return _table(["device", "dtype", "batch", "images/s", "ms/batch", "x batch 1"], rows, markdown)


def train_table(doc: dict, markdown: bool = False) -> str:
    rows = []
    for r in doc.get("train", []):
        if "ms_per_step" in r:
            step = f"{r['ms_per_step']:.1f} [{r['min_ms_per_step']:.1f}-{r['max_ms_per_step']:.1f}]"
            figures = [
                step,
                _fmt(r["samples_per_s"], ".3f"),
                _fmt(r["peak_mem_mb"], ".0f"),
                _fmt(r["peak_total_mb"], ".0f"),
            ]
        else:
            why = "out of memory" if "oom" in r else f"skipped: {r.get('skipped')}"
            figures = [why, "-", "-", "-"]
        est = r["estimate_bytes"]["total_bytes"] / 2**20
        rows.append(
            [
                r["device"],
                r["mode"],
                r["precision"],
                "on" if r["grad_ckpt"] else "off",
                str(r["batch_size"]),
                str(r["cells"]),
                f"{r['trainable_params'] / 1e6:.1f}",
            ]
            + figures
            + [f"{est:.0f}"]
        )
    header = ["device", "mode", "autocast", "grad ckpt", "batch", "cells", "trainable M"]
    header += ["ms/step [min-max]", "samples/s", "step peak MB", "total peak MB", "estimate MB"]
    return _table(header, rows, markdown)


def targets_table(doc: dict, markdown: bool = False) -> str:
    rows = []
    for t in doc.get("targets", []):
        where = f"{t['device']} {t['dtype']}" + (f" N={t['n']}" if "n" in t else "")
        bound = _fmt(t.get("bound"))
        rows.append([t["target"], where, _fmt(t["value"]), bound, "yes" if t["met"] else "NO"])
    return _table(["target", "where", "value", "FLOP bound", "met"], rows, markdown)


def render(doc: dict, markdown: bool = False) -> str:
    """All tables of the document, with the command, machine and date."""
    m = doc["machine"]
    model = doc["model"]
    head = [
        f"command: {doc.get('command') or '-'}",
        f"machine: {m['cpu']} ({m['cpus_allowed']} cpus allowed), devices {', '.join(m['devices'])}"
        + (f" {m['gpu']} (driver {m.get('gpu_driver') or '?'})" if "gpu" in m else "")
        + f", torch {m['torch']} ({m['torch_threads']} threads), transformers {m['transformers']}",
        f"date: {m['date']}; load average at start {m.get('load_average_start')}, end {m.get('load_average_end')}",
        f"model: {model['name']} ({model['family']}, hidden {model['text']['hidden']}, "
        f"{model['text']['layers']} layers, random weights: {model['random_weights']})",
    ]
    if "interrupted" in doc:
        head.append(
            f"INCOMPLETE: interrupted ({doc['interrupted']}); the tables hold what was measured before"
        )
    sections = []
    if doc.get("mask_pass"):
        sections += [
            "matmul reference",
            matmul_table(doc, markdown),
            "mask pass",
            mask_pass_table(doc, markdown),
        ]
    if doc.get("request"):
        sections += ["request latency (median ms)", request_table(doc, markdown)]
        if any(r.get("stages") for r in doc["request"]):
            sections += ["request stages against their bounds (1st query)", stages_table(doc, markdown)]
    if doc.get("batch"):
        sections += ["batch throughput", batch_table(doc, markdown)]
    if doc.get("train"):
        sections += ["training step (forward + backward + AdamW)", train_table(doc, markdown)]
    if doc.get("targets"):
        sections += ["targets", targets_table(doc, markdown)]
    sep = "\n\n" if markdown else "\n"
    return sep.join(["\n".join(("- " + h) if markdown else h for h in head)] + sections)
