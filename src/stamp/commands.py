"""Implementations of the CLI subcommands (each takes the parsed argparse namespace)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from stamp.bench.cli import cmd_bench
from stamp.configuration import ConfigError
from stamp.data.errors import DataError
from stamp.images import ImageError, load_image
from stamp.model.loading import StampModelError
from stamp.refine import RefineError
from stamp.serve.cli import COMMANDS as SERVE_COMMANDS

USER_ERRORS = (
    ImageError,
    StampModelError,
    DataError,
    ConfigError,
    RefineError,
    FileExistsError,
    FileNotFoundError,
    ValueError,
    ImportError,  # a missing optional dependency (e.g. deepspeed for a ZeRO accelerate config)
)


def _predictor(args):
    from stamp.inference import StampPredictor
    from stamp.models import load_model

    model = load_model(args.model, dtype=args.dtype, device=args.device, base_model=args.base_model)
    if args.cells is not None:
        model.processor.set_cell_range(*args.cells)
    from stamp.models import resolve_refine

    return StampPredictor(model, threshold=args.threshold, refine=resolve_refine(args.refine, args.model))


def _print_result(title: str, result) -> None:
    print(f"{title}\n  answer: {result.text}")
    for k, m in enumerate(result.masks):
        print(f"  mask {k}: area {m.area} px, bbox {m.bbox}, score {m.score:.3f}")
    t = result.timings
    print("  timings (ms): " + ", ".join(f"{k} {1000 * v:.1f}" for k, v in t.items()))


def cmd_segment(args) -> int:
    from stamp.io import ensure_writable, write_result

    image = load_image(args.image)
    out = Path(args.out)
    ensure_writable([out / "result.json", out / "overlay.png"], args.force)  # fail before the slow part
    predictor = _predictor(args)
    predictor.set_image(image)
    result = predictor.chat(args.prompt, max_new_tokens=args.max_new_tokens, answer_prefix=args.answer_prefix)
    paths = write_result(
        result, image, out, force=args.force, extra={"image": str(args.image), "prompt": args.prompt}
    )
    _print_result(f"{args.image}: {args.prompt}", result)
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def cmd_demo(args) -> int:
    from stamp.io import ensure_writable, write_result

    out = Path(args.out)
    ensure_writable([out / "result.json", out / "overlay.png"], args.force)  # fail before the slow part
    if args.image:
        image, prompt = load_image(args.image), args.prompt or "Please segment the main object."
    else:
        from stamp.data.synthref import SynthRef

        ds = SynthRef(split="val", seed=0)
        # the first referring sample at or after --seed: its request names an object in the scene
        sample = next(ds[i] for i in range(args.seed, len(ds)) if ds[i].task == "refer")
        image = sample.load_image()
        prompt = args.prompt or sample.turns[0].text
    t0 = time.perf_counter()
    predictor = _predictor(args)
    print(f"model loaded in {time.perf_counter() - t0:.2f} s; image {image.size[0]}x{image.size[1]}")
    predictor.set_image(image)
    answer = predictor.chat(args.question, max_new_tokens=32)
    _print_result(f"Q: {args.question}", answer)
    result = predictor.chat(prompt, max_new_tokens=64)
    _print_result(f"Q: {prompt}", result)
    paths = write_result(
        result,
        image,
        out,
        force=args.force,
        extra={"prompt": prompt, "question": args.question, "answer": answer.text},
    )
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def cmd_train(args) -> int:
    from stamp.configuration import load_config
    from stamp.train.config import TrainConfig
    from stamp.train.trainer import train

    cfg = load_config(TrainConfig, args.config, args.overrides)
    last = train(cfg, resume=args.resume, progress=not args.no_progress)
    if last is not None:
        print(f"last checkpoint: {last} (model: {last / 'model'})")
    if _several_ranks():  # one rank of several: skip the teardown (see train())
        _exit_now()
    return 0


def _several_ranks() -> bool:
    """Whether this process is one rank of a multi-process launch (accelerate/torchrun set WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _exit_now() -> None:
    """End the process at once (exit status 0) after flushing: no destructors, no gloo teardown."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def cmd_eval(args) -> int:
    from stamp.eval.runner import EvalJob, run_eval

    job = EvalJob(
        data=args.data,
        split=args.split,
        model=args.model,
        out=args.out,
        image_root=args.image_root,
        limit=args.limit,
        seed=args.seed,
        force_seg=args.force_seg,
        save_masks=args.save_masks,
        max_new_tokens=args.max_new_tokens,
        overwrite=args.force,
        dtype=args.dtype,
        device=args.device,
        refine=args.refine,
        threshold=args.threshold,
        synth_size=args.synth_size,
        cells=args.cells,
        synth_tasks=args.synth_tasks,
        protocol=args.protocol,
        base_model=args.base_model,
    )
    several = _several_ranks()
    results = run_eval(job, progress=not args.no_progress, teardown=not several)
    print(
        " ".join(
            f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in results["metrics"].items()
        )
    )
    print(f"wrote {args.out}")
    if several:  # one rank of several: end without tearing gloo down (see run_eval, train)
        _exit_now()
    return 0


def cmd_data(args) -> int:
    from stamp.data.export import export_synthref

    out = export_synthref(args.out, args.split, args.n, args.format, seed=args.seed, overwrite=args.force)
    print(f"wrote {args.n} SynthRef {args.split} samples in {args.format} format to {out}")
    return 0


def cmd_calibrate(args) -> int:
    from dataclasses import fields

    from stamp.eval.calibrate import DEFAULT_THRESHOLDS, CalibrationJob, format_table, run_calibration

    same = {f.name for f in fields(CalibrationJob)} - {"thresholds", "overwrite"}
    job = CalibrationJob(
        **{name: getattr(args, name) for name in same},
        thresholds=tuple(args.thresholds or DEFAULT_THRESHOLDS),
        overwrite=args.force,
    )
    summary = run_calibration(job, progress=not args.no_progress)
    print(
        f"{summary['data']} {summary['split']} seed {summary['seed']}, refine {summary['refine']}, "
        f"{summary['results'][0]['metrics']['n_samples']} samples (model's threshold was {summary['threshold_before']})"
    )
    print(format_table(summary))
    print(f"best threshold: {summary['best']}")
    if summary["written"]:
        print(f"wrote mask_threshold={summary['best']} to {summary['written']}")
    else:
        print("(not stored: rerun with --write to make it the model's default)")
    if args.out:
        print(f"wrote {args.out}")
    return 0


def cmd_compare(args) -> int:
    from pathlib import Path

    from stamp.eval.compare import compare, format_comparison, load_results
    from stamp.io.outputs import atomic_write_bytes, ensure_writable

    if args.json:
        ensure_writable([Path(args.json)], args.force)
    names = (Path(args.a).name, Path(args.b).name)
    if names[0] == names[1]:
        names = (args.a, args.b)
    result = compare(
        load_results(args.a),
        load_results(args.b),
        resamples=args.resamples,
        seed=args.seed,
        level=args.level,
        names=names,
    )
    print(f"A = {args.a}\nB = {args.b}")
    print(format_comparison(result, names=("A", "B")))
    if args.json:
        doc = {"schema": "stamp-compare/1", "a": args.a, "b": args.b, **result}
        atomic_write_bytes(Path(args.json), (json.dumps(doc, indent=1) + "\n").encode())
        print(f"wrote {args.json}")
    return 0


COMMANDS = {"segment": cmd_segment, "demo": cmd_demo, "train": cmd_train, "eval": cmd_eval, "data": cmd_data}
COMMANDS["calibrate"] = cmd_calibrate
COMMANDS["compare"] = cmd_compare
COMMANDS.update(SERVE_COMMANDS)
COMMANDS["bench"] = cmd_bench
