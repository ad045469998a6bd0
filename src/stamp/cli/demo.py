"""`stamp demo`: the bundled model on a SynthRef scene (or --image): a question, a segmentation, an overlay."""

from __future__ import annotations

import time
from pathlib import Path

from stamp.cli.args import (
    add_command,
    add_model_args,
    add_output_args,
    add_predictor_args,
    non_negative_int,
)
from stamp.cli.common import build_predictor, check_out_dir, print_result, warn_unfinished

EXAMPLES = """examples:
  stamp demo                                     # a SynthRef scene; writes stamp_out/demo/
  stamp demo --image shapes.png --prompt "Segment the red circle." --out demo_out --force"""


def add_parser(sub):
    p = add_command(
        sub, "demo", "run the bundled model on a SynthRef scene (or --image) and write an overlay", EXAMPLES
    )
    add_model_args(p)
    add_predictor_args(p)
    p.add_argument("--image", default=None, help="an image file instead of a generated scene")
    p.add_argument("--prompt", default=None, help="segmentation request (default: the scene's own)")
    p.add_argument(
        "--question", default="How many shapes are in the image?", help="a question without a mask"
    )
    p.add_argument(
        "--seed", type=non_negative_int, default=0, help="which SynthRef val scene to render (default 0)"
    )
    add_output_args(p, "output directory", default="stamp_out/demo")
    return p


def run(args) -> int:
    from stamp.imaging import load_image
    from stamp.outputs.files import check_result_dir, write_result

    out = Path(args.out)
    check_out_dir(out)
    check_result_dir(out, args.force)  # fail before the slow part
    if args.image:
        image, prompt = (
            load_image(args.image, args.max_image_pixels),
            args.prompt or "Please segment the main object.",
        )
    else:
        from stamp.data.synthref import SynthRef

        ds = SynthRef(split="val", seed=0)
        # the first referring sample at or after --seed: its request names an object in the scene
        sample = next(ds[i] for i in range(args.seed, len(ds)) if ds[i].task == "refer")
        image = sample.load_image()
        prompt = args.prompt or sample.turns[0].text
    t0 = time.perf_counter()
    predictor = build_predictor(args)
    print(f"model loaded in {time.perf_counter() - t0:.2f} s; image {image.size[0]}x{image.size[1]}")
    predictor.set_image(image)
    answer = predictor.chat(args.question, max_new_tokens=32)
    print_result(f"Q: {args.question}", answer)
    warn_unfinished(f"Q: {args.question}", answer)
    result = predictor.chat(prompt, max_new_tokens=64)
    print_result(f"Q: {prompt}", result)
    warn_unfinished(f"Q: {prompt}", result)
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
