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


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm")


def _predictor(args):
    """The model and predictor a command asked for (the SAM file of `--refine` checked first)."""
    from stamp.arguments import check_refine_source
    from stamp.inference import StampPredictor
    from stamp.models import load_model, resolve_refine

    check_refine_source(args.refine)
    model = load_model(args.model, dtype=args.dtype, device=args.device, base_model=args.base_model)
    if args.cells is not None:
        model.processor.set_cell_range(*args.cells)
    return StampPredictor(model, threshold=args.threshold, refine=resolve_refine(args.refine, model))


def _print_result(title: str, result) -> None:
    print(f"{title}\n  answer: {result.text}")
    for k, m in enumerate(result.masks):
        print(f"  mask {k}: area {m.area} px, bbox {m.bbox}, score {m.score:.3f}")
    t = result.timings
    print("  timings (ms): " + ", ".join(f"{k} {1000 * v:.1f}" for k, v in t.items()))


def _check_out_dir(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--out {out} is a file, not a folder")


def segment_inputs(paths: list[str]) -> list[Path]:
    """The image files named by `stamp segment`'s arguments: files as given, folders' image files
    (by suffix) in name order. ImageError for a missing path or a folder without images."""
    files: list[Path] = []
    for text in paths:
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ImageError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) in folder {path}")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise ImageError(f"image file not found: {path}")
    return files


def output_names(files: list[Path]) -> list[str]:
    """One output folder name per image: its file name without the suffix; a name already taken gets
    -2, -3, ... (a.png and a.jpg -> a, a-2)."""
    names: list[str] = []
    for f in files:
        name, k = f.stem, 2
        while name in names:
            name, k = f"{f.stem}-{k}", k + 1
        names.append(name)
    return names


def _check_image(path: Path) -> None:
    """Refuse a file that is not an image (format from its header; nothing decoded)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):
            pass
    except UnidentifiedImageError:
        raise ImageError(f"not an image file (cannot identify format): {path}") from None
    except OSError as exc:
        raise ImageError(f"cannot read image {path}: {exc}") from None


def cmd_segment(args) -> int:
    """One image file: its outputs directly in --out. Several images or a folder: --out/<name>/ per
    image and --out/summary.json, answered in batches of --batch-size (`StampPredictor.chat_batch`)."""
    from stamp.inference import ChatRequest
    from stamp.io import atomic_write_bytes, ensure_writable, write_result

    out = Path(args.out)
    _check_out_dir(out)
    files = segment_inputs(args.images)
    flat = len(args.images) == 1 and Path(args.images[0]).is_file()
    names = output_names(files)
    folders = [out] if flat else [out / n for n in names]
    for folder in folders:  # everything is checked before the slow part
        _check_out_dir(folder)
        ensure_writable([folder / "result.json", folder / "overlay.png"], args.force)
    if not flat:
        ensure_writable([out / "summary.json"], args.force)
    if flat:
        load_image(files[0])
    else:
        for f in files:
            _check_image(f)
    predictor = _predictor(args)
    summary = []
    for start in range(0, len(files), args.batch_size):
        batch = files[start : start + args.batch_size]
        images = [load_image(f) for f in batch]
        requests = [
            ChatRequest(im, args.prompt, answer_prefix=args.answer_prefix, max_new_tokens=args.max_new_tokens)
            for im in images
        ]
        results = predictor.chat_batch(requests)
        for k, (f, image, result) in enumerate(zip(batch, images, results)):
            folder = folders[start + k]
            paths = write_result(
                result, image, folder, force=args.force, extra={"image": str(f), "prompt": args.prompt}
            )
            if flat:
                _print_result(f"{f}: {args.prompt}", result)
                print(f"wrote {', '.join(str(p) for p in paths)}")
            else:
                print(f"{f} -> {folder}/: {result.text!r} ({len(result.masks)} mask(s))")
            summary.append(
                {"image": str(f), "out": folder.name, "text": result.text, "masks": len(result.masks)}
            )
    if not flat:
        doc = {"prompt": args.prompt, "model": args.model or "bundled", "images": summary}
        atomic_write_bytes(out / "summary.json", (json.dumps(doc, indent=2) + "\n").encode())
        print(f"wrote {len(files)} result folders and {out / 'summary.json'}")
    return 0


def cmd_demo(args) -> int:
    from stamp.io import ensure_writable, write_result

    out = Path(args.out)
    _check_out_dir(out)
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
        extra={
            "image": str(args.image) if args.image else None,
            "prompt": prompt,
            "question": args.question,
            "answer": answer.text,
        },
    )
    print(f"wrote {', '.join(str(p) for p in paths)}")
    return 0


def cmd_train(args) -> int:
    import shlex

    from stamp.configuration import load_config
    from stamp.recipes import find_recipe
    from stamp.train.checkpoint import latest_checkpoint
    from stamp.train.config import TrainConfig
    from stamp.train.trainer import train

    cfg = load_config(TrainConfig, find_recipe(args.config), args.overrides)
    try:
        last = train(cfg, resume=args.resume, progress=not args.no_progress)
    except KeyboardInterrupt:
        done = latest_checkpoint(Path(cfg.run.out_dir))
        resume = "stamp train " + shlex.join([args.config, *args.overrides, "--resume"])
        if done is None:
            print("stamp: interrupted before the first checkpoint; nothing to resume", file=sys.stderr)
        else:
            print(f"stamp: interrupted; last checkpoint: {done}; resume with: {resume}", file=sys.stderr)
        return 130
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
    print(f"{results['n_samples']} samples, {results['n_expressions']} expressions scored")
    print(f"wrote {args.out}")
    if several:  # one rank of several: end without tearing gloo down (see run_eval, train)
        _exit_now()
    return 0


def cmd_data(args) -> int:
    import shlex

    from stamp.data.export import EVAL_KINDS, export_synthref

    out = Path(args.out)
    if out.exists() and not args.force and (out.is_file() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty; use --force to replace it")
    out = export_synthref(
        out,
        args.split,
        args.n,
        args.format,
        seed=args.seed,
        overwrite=args.force,
        progress=not args.no_progress,
    )
    print(f"wrote {args.n} SynthRef {args.split} samples in {args.format} format to {out}")
    kind = EVAL_KINDS[args.format]
    where = out / "conversations.json" if args.format == "llava" else out
    print(f"evaluate with: stamp eval --data {shlex.quote(f'{kind}:{where}')} --split {args.split}")
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
