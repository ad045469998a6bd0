"""`stamp eval --data KIND:PATH --split SPLIT [--model DIR] --out results.json` (docs/EVALUATION.md)."""

from __future__ import annotations

from stamp.cli.args import (
    Flag,
    add_command,
    add_generation_args,
    add_model_args,
    add_predictor_args,
    add_progress_arg,
    int_pair,
    non_negative_int,
    positive_int,
    weights,
)
from stamp.cli.common import check_out_dir, check_out_file, exit_now, several_ranks

EXAMPLES = """examples:
  stamp eval --data synthref --split val --limit 200 --out synth.json
  stamp eval --data refcoco:/data/lisa --split val --model /models/stamp-2b --out results.json
  stamp eval --data refcoco:/data/lisa --split testA --model /models/STAMP-2B-uni --protocol authors --out a.json
  stamp eval --data grefcoco:/data/lisa --split val --save-masks masks/ --out g.json
  accelerate launch --num_processes 2 -m stamp eval ...   # samples sharded over 2 ranks"""


def add_parser(sub):
    p = add_command(
        sub, "eval", "evaluate on a data split; write results.json (cIoU, gIoU, N-acc, ...)", EXAMPLES
    )
    p.add_argument(
        "--data",
        required=True,
        help="KIND:PATH, e.g. refcoco:/data/lisa, grefcoco:/data/lisa, reasonseg:/data/reasonseg, or "
        "synthref (generated: no path)",
    )
    p.add_argument(
        "--split", default="val", help="the data's split: val, testA, testB, test, ... (default val)"
    )
    p.add_argument("--out", default="results.json", help="results file (never overwritten without --force)")
    p.add_argument(
        "--image-root", default=None, help="where the images are (default: the LISA layout under the root)"
    )
    p.add_argument(
        "--limit",
        type=positive_int,
        default=None,
        help="evaluate only the first N samples (images with their requests); a sample may hold several "
        "expressions, each scored: the results report both counts",
    )
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of SynthRef's scenes and of the question templates (default 0)",
    )
    p.add_argument(
        "--force-seg",
        action="store_true",
        help='force answers to start with "Sure, it is <|seg|>" (as the literature does)',
    )
    p.add_argument(
        "--save-masks",
        default=None,
        metavar="DIR",
        help="write each predicted mask as a PNG into this folder (a folder that is not empty needs "
        "--force, which replaces its masks)",
    )
    add_generation_args(
        p,
        max_new_tokens=Flag(
            type=non_negative_int, default=None, help="answer token budget (default: the protocol's)"
        ),
    )
    p.add_argument(
        "--protocol",
        default="stamp",
        choices=["stamp", "authors"],
        help="how to ask and score: stamp (default) or authors (the paper's: their question templates, "
        "1024 cells, 1024 answer tokens, logit 0, nearest upsampling; see docs/EVALUATION.md)",
    )
    p.add_argument("--force", action="store_true", help="overwrite --out and replace --save-masks")
    add_progress_arg(p)
    p.add_argument(
        "--synth-size", type=int_pair, default=None, metavar="MIN,MAX", help="SynthRef image size range in px"
    )
    p.add_argument(
        "--synth-tasks",
        type=weights,
        default=None,
        metavar="TASK=W,...",
        help="SynthRef task mix, e.g. refer=0.5,vqa=0.3 (default: the split's mix)",
    )
    add_model_args(p)
    add_predictor_args(p)
    return p


def run(args) -> int:
    import sys
    from pathlib import Path

    from stamp.bundled import notice
    from stamp.eval.runner import EvalJob, run_eval

    check_out_file(Path(args.out))  # before the model loads
    if args.save_masks:
        check_out_dir(Path(args.save_masks), "--save-masks")
    if notice(args.model):
        print(notice(args.model), file=sys.stderr)

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
        repetition_stop=not args.no_repetition_stop,
    )
    several = several_ranks()
    results = run_eval(job, progress=not args.no_progress, teardown=not several)
    metrics = results["metrics"]
    print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()))
    print(f"{results['n_samples']} samples, {results['n_expressions']} expressions scored")
    print(f"wrote {args.out}")
    if several:  # one rank of several: end without tearing gloo down (see run_eval)
        exit_now()
    return 0
