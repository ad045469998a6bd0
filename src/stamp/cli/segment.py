"""`stamp segment IMAGE [IMAGE ...] | FOLDER --prompt ... --out DIR`: answer a prompt about images.

One image file: result.json, overlay.png and mask_<k>.png directly in --out. Several images or a
folder: one folder per image, --out/<image name>/, and --out/summary.json; they run in batches of
--batch-size (`StampPredictor.chat_batch`).
"""

from __future__ import annotations

import json
from pathlib import Path

from stamp.cli.args import (
    add_command,
    add_generation_args,
    add_model_args,
    add_output_args,
    add_predictor_args,
    from_args,
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
--batch-size."""


def add_parser(sub):
    p = add_command(
        sub, "segment", "answer a prompt about images; write result.json, masks, overlay per image", EXAMPLES
    )
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files and/or folders of images")
    p.add_argument("--prompt", required=True, help="what to segment or ask")
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


def _check_image(path: Path) -> None:
    """Refuse a file that is not an image (format from its header; nothing decoded)."""
    from PIL import Image, UnidentifiedImageError

    from stamp.imaging import ImageError

    try:
        with Image.open(path):
            pass
    except UnidentifiedImageError:
        raise ImageError(f"not an image file (cannot identify format): {path}") from None
    except OSError as exc:
        raise ImageError(f"cannot read image {path}: {exc}") from None


def run(args) -> int:
    from stamp.imaging import load_image
    from stamp.inference import ChatRequest, GenerationConfig
    from stamp.outputs import atomic_write_bytes, ensure_writable, write_result

    out = Path(args.out)
    check_out_dir(out)
    files = segment_inputs(args.images)
    flat = len(args.images) == 1 and Path(args.images[0]).is_file()
    names = output_names(files)
    folders = [out] if flat else [out / n for n in names]
    for folder in folders:  # everything is checked before the slow part
        check_out_dir(folder)
        ensure_writable([folder / "result.json", folder / "overlay.png"], args.force)
    if not flat:
        ensure_writable([out / "summary.json"], args.force)
    if flat:
        load_image(files[0])
    else:
        for f in files:
            _check_image(f)
    predictor = build_predictor(args)
    generation = from_args(GenerationConfig, args)
    summary = []
    for start in range(0, len(files), args.batch_size):
        batch = files[start : start + args.batch_size]
        images = [load_image(f) for f in batch]
        requests = [ChatRequest(im, args.prompt, answer_prefix=args.answer_prefix) for im in images]
        results = predictor.chat_batch(requests, generation=generation)
        for k, (f, image, result) in enumerate(zip(batch, images, results)):
            folder = folders[start + k]
            paths = write_result(
                result, image, folder, force=args.force, extra={"image": str(f), "prompt": args.prompt}
            )
            warn_unfinished(str(f), result)
            if flat:
                print_result(f"{f}: {args.prompt}", result)
                print(f"wrote {', '.join(str(p) for p in paths)}")
            else:
                print(f"{f} -> {folder}/: {result.text!r} ({len(result.masks)} mask(s))")
            summary.append(
                {
                    "image": str(f),
                    "out": folder.name,
                    "text": result.text,
                    "finish_reason": result.finish_reason,
                    "masks": len(result.masks),
                }
            )
    if not flat:
        doc = {"prompt": args.prompt, "model": args.model or "bundled", "images": summary}
        atomic_write_bytes(out / "summary.json", (json.dumps(doc, indent=2) + "\n").encode())
        print(f"wrote {len(files)} result folders and {out / 'summary.json'}")
    return 0
