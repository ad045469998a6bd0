"""`stamp segment IMAGE [IMAGE ...] | FOLDER --prompt ... --out DIR`: answer a prompt about images.

One image file: result.json, overlay.png and mask_<k>.png directly in --out. Several images or a
folder: one folder per image, --out/<image name>/, and --out/summary.json; they run in batches of
--batch-size (`StampPredictor.chat_batch`). A result folder is written whole (`staged_dir`): --force
replaces an earlier result, stale mask files included, once the new one is complete. A file of a
folder or list that cannot be read is skipped with a warning, listed in summary.json's `skipped`, and
the command ends with exit status 1 after the others are done.
"""

from __future__ import annotations

import sys
from pathlib import Path

from stamp.cli.args import (
    add_command,
    add_generation_args,
    add_model_args,
    add_output_args,
    add_predictor_args,
    from_args,
    history,
    positive_int,
)
from stamp.cli.common import build_predictor, check_out_dir, print_result, warn_unfinished

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm")
EXAMPLES = """examples:
  stamp segment scene.png --prompt "Please segment the red circle." --out out/
  stamp segment a.png b.png --prompt "Segment the blue square." --out out/   # out/a/, out/b/, summary.json
  stamp segment photos/ --prompt "Segment the dog." --model /models/stamp-2b --out out/ --force

One image file: result.json, overlay.png and mask_<k>.png directly in --out. Several images or a
folder: one folder per image, --out/<image name>/, and --out/summary.json; they run in batches of
--batch-size. --force replaces an earlier result whole. Unreadable files of a folder are skipped with a
warning and listed in summary.json; the exit status is then 1."""


def add_parser(sub):
    p = add_command(
        sub, "segment", "answer a prompt about images; write result.json, masks, overlay per image", EXAMPLES
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files and/or folders of images")
    p.add_argument("--prompt", required=True, help="what to segment or ask")
    p.add_argument(
        "--history",
        type=history,
        default=None,
        metavar="JSON",
        help="earlier turns, oldest first, as the HTTP API takes them: a JSON list "
        '[{"role": "user", "text": ...}, {"role": "assistant", "text": ...}, ...] (user first, assistant '
        "last), inline or a .json file",
    )
    add_model_args(p)
    add_predictor_args(p)
    add_output_args(p, "output directory")
    add_generation_args(p)
    p.add_argument(
        "--answer-prefix",
        default=None,
        help='force the answer to start with this, e.g. "Sure, it is <|seg|>"',
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=4,
        help="images answered together in one batched generation (default 4)",
    )
    return p


def segment_inputs(paths: list[str]) -> list[Path]:
    """The image files named by the arguments: files as given, folders' image files (by suffix) in name
    order. ImageError for a missing path or a folder without images."""
    from stamp.imaging import ImageError

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


def run(args) -> int:
    from stamp.imaging import ImageError, image_file_size, load_image
    from stamp.inference import ChatRequest, GenerationConfig
    from stamp.outputs.files import (
        check_result_dir,
        ensure_writable,
        result_to_dict,
        write_json,
        write_result,
    )

    out = Path(args.out)
    check_out_dir(out)
    files = segment_inputs(args.images)
    flat = len(args.images) == 1 and Path(args.images[0]).is_file()
    skipped: list[dict] = []  # unreadable files of a folder or list: left out, reported, exit 1

    def skip(f: Path, exc: Exception) -> None:
        print(f"stamp: warning: skipping {f}: {exc}", file=sys.stderr)
        skipped.append({"image": str(f), "error": str(exc)})

    if flat:
        load_image(files[0], args.max_image_pixels)
    else:
        readable = []
        for f in files:
            try:
                image_file_size(f, args.max_image_pixels)  # its header: an image, not too large
                readable.append(f)
            except ImageError as exc:
                skip(f, exc)
        files = readable
    names = output_names(files)
    folders = [out] if flat else [out / n for n in names]
    for folder in folders:  # everything is checked before the slow part
        check_out_dir(folder)
        check_result_dir(folder, args.force)
    if not flat:
        ensure_writable([out / "summary.json"], args.force)
    predictor = build_predictor(args) if files else None
    generation = from_args(GenerationConfig, args)
    summary = []
    for start in range(0, len(files), args.batch_size):
        batch, images = [], []
        for f, folder in zip(
            files[start : start + args.batch_size], folders[start : start + args.batch_size]
        ):
            try:
                images.append(load_image(f, args.max_image_pixels))
                batch.append((f, folder))
            except ImageError as exc:  # its header was an image's, its data not
                if flat:
                    raise
                skip(f, exc)
        requests = [
            ChatRequest(im, args.prompt, args.history, answer_prefix=args.answer_prefix) for im in images
        ]
        results = predictor.chat_batch(requests, generation=generation) if requests else []
        for (f, folder), image, result in zip(batch, images, results):
            paths = write_result(
                result, image, folder, force=args.force, extra={"image": str(f), "prompt": args.prompt}
            )
            warn_unfinished(str(f), result)
            if flat:
                print_result(f"{f}: {args.prompt}", result)
                print(f"wrote {', '.join(str(p) for p in paths)}")
            else:
                print(f"{f} -> {folder}/: {result.text!r} ({len(result.masks)} mask(s))")
            summary.append(summary_entry(str(f), folder.name, result_to_dict(result, prompt=args.prompt)))
    if not flat:
        doc = {"prompt": args.prompt, "model": args.model or "bundled", "images": summary, "skipped": skipped}
        write_json(out / "summary.json", doc)
        print(f"wrote {len(summary)} result folders and {out / 'summary.json'}")
    if skipped:
        total = len(summary) + len(skipped)
        print(
            f"stamp: error: {len(skipped)} of {total} images could not be read and were skipped "
            f"(listed in {out / 'summary.json'})",
            file=sys.stderr,
        )
        return 1
    return 0


def summary_entry(image: str, out: str, record: dict) -> dict:
    """summary.json's entry of one image: where its result folder is, its answer, each mask's index,
    phrase, area, score and COCO RLE, and its timings (`timings`: this image's, its share of what its
    batch shared; `batch`: the whole batch's) -- from its result.json record (`result_to_dict`)."""
    keys = ("index", "phrase", "area", "score", "rle")
    return {
        "image": image,
        "out": out,
        "text": record["text"],
        "finish_reason": record["finish_reason"],
        "masks": [{k: m[k] for k in keys} for m in record["masks"]],
        "timings": record["timings"],
        "batch": record["batch"],
    }
