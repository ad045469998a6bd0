"""`stamp bench`: its settings from the command line's options, every part run in one process and
assembled into the JSON document (schema "stamp-bench/1", docs/PERFORMANCE.md):
    schema, command, machine, model, settings, matmul, mask_pass, request, batch, train, targets
"""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from stamp.bench.mask_pass import MaskPassSettings, run_mask_pass
from stamp.bench.request import RequestSettings, run_requests
from stamp.bench.setup import describe_model, load_average, machine_info
from stamp.bench.train_step import TrainSettings, run_train

SCHEMA = "stamp-bench/1"
PARTS = ("mask_pass", "request", "train")
DEFAULT_PARTS = ("mask_pass", "request")
"""The training step runs only when asked for (`--parts train`): it is slow and changes the weights."""


@dataclass
class BenchSettings:
    """Everything one `stamp bench` run does."""

    mask_pass: MaskPassSettings = field(default_factory=MaskPassSettings)
    request: RequestSettings = field(default_factory=RequestSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    parts: list[str] = field(default_factory=lambda: list(DEFAULT_PARTS))
    device: str = "auto"
    """"auto": the CPU, then CUDA when present; or one device ("cpu", "cuda", "cuda:1")."""
    quick: bool = False

    @classmethod
    def quick_settings(cls, dtypes: list[str] | None = None, device: str = "auto") -> BenchSettings:
        """A few seconds on the tiny model: every code path, no meaningful numbers (tests, smoke runs)."""
        dtypes = dtypes or ["fp32"]
        return cls(
            mask_pass=MaskPassSettings(
                ns=[16, 64],
                dtypes=dtypes,
                history=32,
                repeats=2,
                warmup=1,
                ar_repeats=1,
                ar_budget_s=2.0,
                matmul_shapes=[(128, 128, 128), (256, 256, 256)],
            ),
            request=RequestSettings(
                dtypes=dtypes,
                requests=1,
                warmup=0,
                max_new_tokens=3,
                batch_sizes=[1, 2],
                batch_repeats=1,
                matmul_shapes=[(128, 128, 128), (256, 256, 256)],
                bandwidth_bytes=32 * 2**20,
            ),
            train=TrainSettings(batch_sizes=[1, 2], image_side=224, steps=2, warmup=1),
            device=device,
            quick=True,
        )


def real_preset_settings(device: str = "auto") -> BenchSettings:
    """The defaults for a model of real size (`stamp.bench.presets`): bf16, N = 256 and 1024 after a
    history of 512, the whole autoregressive baseline once, one request at 448x448 and at 896x896
    (256 and 1,024 cells) after a warm-up, no batch throughput; both parts take the same matmul shapes
    as their compute reference."""
    shapes = [(1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096)]
    return BenchSettings(
        mask_pass=MaskPassSettings(
            ns=[256, 1024],
            dtypes=["bf16"],
            repeats=3,
            ar_repeats=1,
            matmul_shapes=shapes,
        ),
        request=RequestSettings(
            dtypes=["bf16"], requests=3, image_sides=[448, 896], batch_sizes=[], matmul_shapes=shapes
        ),
        device=device,
    )


def resolve_devices(device: str) -> list[str]:
    """The devices a run covers: "auto" = ["cpu"] + ["cuda"] when CUDA is available."""
    if device == "auto":
        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available")
    return [device]


def evaluate_targets(doc: dict) -> list[dict]:
    """The issue's targets against this run's figures: one entry per (target, dtype[, n])."""
    out = []
    for r in doc.get("mask_pass", []):
        common = {"device": r["device"], "dtype": r["dtype"], "n": r["n"], "history": r["history"]}
        if r["n"] in (256, 1024):
            out.append(
                {
                    "target": "ar_ratio >= 30",
                    **common,
                    "value": r["ar_ratio"],
                    "met": r["ar_ratio"] >= 30,
                    "bound": r.get("ar_ratio_bound"),  # at the matmul rate: what no pass of these FLOPs beats
                }
            )
        if r["history"] >= 512:  # the target is about recomputing a history of 512 tokens
            out.append(
                {
                    "target": "cache_ratio >= 2",
                    **common,
                    "value": r["cache_ratio"],
                    "met": r["cache_ratio"] >= 2,
                    "bound": r["cache_flops_ratio"],  # the FLOP ratio: what a compute-bound pass reaches
                }
            )
        if r["n"] == 1024 and r["flops_fraction"] is not None:
            out.append(
                {
                    "target": "flops_fraction >= 0.75",
                    **common,
                    "value": r["flops_fraction"],
                    "met": r["flops_fraction"] >= 0.75,
                    "bound": r.get("pass_matmul_fraction"),  # the pass's own matmul shapes, measured alone
                }
            )
    for r in doc.get("batch", []):
        if r["batch_size"] == 8 and r.get("speedup_vs_batch_1") is not None:
            value = r["speedup_vs_batch_1"]
            out.append(
                {
                    "target": "batch 8 >= 1.5x batch 1",
                    "device": r["device"],
                    "dtype": r["dtype"],
                    "value": value,
                    "met": value >= 1.5,
                }
            )
    return out


class BenchInterrupted(Exception):
    """Raised (e.g. by a SIGTERM handler) to end a run early; `run_bench` returns what it measured."""


def run_bench(model, processor, source: dict, settings: BenchSettings, command: str = "", log=print) -> dict:
    """Run the selected parts on `model` (already on `settings.device`) and return the JSON document."""
    unknown = sorted(set(settings.parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown bench part(s) {unknown}; use {', '.join(PARTS)}")
    devices = resolve_devices(settings.device)
    doc: dict = {
        "schema": SCHEMA,
        "command": command,
        "machine": machine_info(devices),
        "model": describe_model(model, source),
        "settings": {**asdict(settings), "parts": list(settings.parts), "devices": devices},
        "matmul": [],
        "mask_pass": [],
        "request": [],
        "batch": [],
        "train": [],
    }
    m = doc["machine"]
    log(
        f"stamp bench: {doc['model']['name']} on {', '.join(devices)} ({m['cpu']}), "
        f"torch threads {m['torch_threads']}, load average {m['load_average_start']}"
    )
    try:
        for device in devices:
            model.to(device)
            tag = {"device": device}
            if "mask_pass" in settings.parts:
                records, refs = [], []
                try:
                    run_mask_pass(
                        model, settings.mask_pass, log=log, into=(records, refs), processor=processor
                    )
                finally:  # the measurements finished so far are kept if the run is interrupted
                    doc["mask_pass"] += [{**tag, **r} for r in records]
                    doc["matmul"] += [{**tag, **r} for r in refs]
            if "request" in settings.parts:
                requests, batches = run_requests(model, processor, settings.request, log=log)
                doc["request"] += [{**tag, **r} for r in requests]
                doc["batch"] += [{**tag, **r} for r in batches]
            if "train" in settings.parts:  # last: its optimizer steps change the weights
                records = run_train(model, processor, settings.train, log=log)
                doc["train"] += [{**tag, **r} for r in records]
    except (KeyboardInterrupt, BenchInterrupted) as stop:
        doc["interrupted"] = str(stop) or type(stop).__name__
        log(f"stamp bench: interrupted ({doc['interrupted']}); keeping the measurements made so far")
    finally:
        model.to("cpu")
    m["load_average_end"] = load_average()
    doc["targets"] = evaluate_targets(doc)
    return doc


def settings_from_args(args) -> BenchSettings:
    """`BenchSettings` from the parsed `stamp bench` options (quick mode first, explicit options on top)."""
    from stamp.bench.presets import PRESETS

    device = args.device or "auto"
    if args.quick:
        s = BenchSettings.quick_settings(args.dtypes, device)
    elif args.preset in PRESETS:
        s = real_preset_settings(device)
    else:
        s = BenchSettings(device=device)
    mp, rq, tr = s.mask_pass, s.request, s.train
    if args.dtypes:
        mp.dtypes = rq.dtypes = list(args.dtypes)
    for value, obj, name in (
        (args.n, mp, "ns"),
        (args.history, mp, "history"),
        (args.repeats, mp, "repeats"),
        (args.ar_repeats, mp, "ar_repeats"),
        (args.ar_budget, mp, "ar_budget_s"),
        (args.ar_steps, mp, "ar_steps"),
        (args.image_sizes, rq, "image_sides"),
        (args.batch_sizes, rq, "batch_sizes"),
        (args.requests, rq, "requests"),
        (args.max_new_tokens, rq, "max_new_tokens"),
        (args.parts, s, "parts"),
        (args.train_batch_sizes, tr, "batch_sizes"),
        (args.grad_ckpt, tr, "grad_ckpt"),
        (args.train_image_size, tr, "image_side"),
        (args.train_steps, tr, "steps"),
    ):
        if value is not None:
            setattr(obj, name, value)
    if args.repeats is not None:
        rq.batch_repeats = args.repeats
    if mp.history < 1 or mp.repeats < 1 or rq.requests < 1 or rq.max_new_tokens < 0:
        raise ValueError("--history, --repeats and --requests must be >= 1, --max-new-tokens >= 0")
    if mp.ar_steps is not None and mp.ar_steps < 1:
        raise ValueError("--ar-steps must be >= 1")
    tr.lora = tr.lora or args.lora
    if tr.image_side < 28 or tr.steps < 1:
        raise ValueError("--train-image-size must be >= 28 and --train-steps >= 1")
    resolve_devices(s.device)  # an unavailable device fails before the model loads
    return s


def check_preset_training(preset: str, settings: BenchSettings, dtype: torch.dtype) -> None:
    """Raise `PresetMemoryError` when the training step of a real-size preset cannot fit a device."""
    from stamp.bench.presets import PROCESSOR_SETTINGS, build_config, meta_model
    from stamp.bench.train_step import cells_for, check_train_memory

    config, _ = build_config(preset)
    model = meta_model(config, dtype)
    cells = cells_for(PROCESSOR_SETTINGS, settings.train.image_side)
    for device in resolve_devices(settings.device):
        check_train_memory(preset, model, settings.train, cells, device)


def run_command(args, command: str) -> int:
    """`stamp bench` for the parsed options `args`: prints the tables, writes --json. Returns the exit
    code (2: a preset that cannot fit; 130: interrupted, what was measured is kept)."""
    from stamp.bench.mask_pass import DTYPES
    from stamp.bench.presets import PRESETS, PresetMemoryError
    from stamp.bench.report import check_writable, render, write_json
    from stamp.bench.setup import load_bench_model, set_threads

    if args.report:
        path = Path(args.report)
        if not path.is_file():
            raise FileNotFoundError(f"bench results file not found: {path}")
        print(render(json.loads(path.read_text()), markdown=args.markdown))
        return 0
    settings = settings_from_args(args)
    if args.json:
        check_writable(args.json, args.force)  # fail before the slow part
    print(f"stamp bench: torch.set_num_threads({set_threads(args.threads)})")
    preset = args.preset or ("tiny" if args.quick and args.model is None else None)
    # a real-size preset is built where and as it first runs (no fp32 copy of a 7B model on the CPU)
    first_device = resolve_devices(settings.device)[0]
    if "mask_pass" in settings.parts:
        dtypes = settings.mask_pass.dtypes
    elif "request" in settings.parts:
        dtypes = settings.request.dtypes
    else:  # the training step alone: the weights in its precision (bf16 as a pretrained Qwen2-VL loads)
        dtypes = [settings.train.precision]
    try:
        if "train" in settings.parts and preset in PRESETS:  # before anything is allocated
            check_preset_training(preset, settings, DTYPES[dtypes[0]])
        model, processor, source = load_bench_model(
            args.model, preset, first_device, args.attn, DTYPES[dtypes[0]]
        )
    except PresetMemoryError as err:
        print(f"stamp bench: {err}", file=sys.stderr)
        return 2
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)  # e.g. `timeout`: keep what was measured
    try:
        doc = run_bench(model, processor, source, settings, command=command)
    finally:
        signal.signal(signal.SIGTERM, previous)
    written = write_json(doc, args.json, force=args.force) if args.json else None  # before printing
    print()
    print(render(doc, markdown=args.markdown))
    if written:
        print(f"wrote {written}")
    if "interrupted" in doc:
        print(f"stamp bench: incomplete run (interrupted: {doc['interrupted']})", file=sys.stderr)
        return 130
    return 0


def _stop_on_sigterm(signum, frame):
    raise BenchInterrupted("SIGTERM")
