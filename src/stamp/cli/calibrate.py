"""`stamp calibrate --data KIND:PATH [--model DIR] [--write]`: choose the model's mask threshold."""

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
    probabilities,
)

EXAMPLES = """examples:
  stamp calibrate --data synthref --model runs/x/model --write
  stamp calibrate --data refcoco:/data/lisa --split val --model /models/stamp-2b --out sweep.json"""


def add_parser(sub):
    p = add_command(
        sub,
        "calibrate",
        "choose the model's mask threshold on held-out data (one model pass, many thresholds)",
        EXAMPLES,
        description="Sweep the foreground threshold on held-out data and pick the one with the best mean "
        "of cIoU, gIoU, N-acc and T-acc (those the data reports). Use data you do not report: for "
        "SynthRef, the default --seed 1 of val (the reported val uses seed 0).",
    )
    p.add_argument("--data", required=True, help="KIND:PATH, as for stamp eval")
    p.add_argument("--split", default="val", help="the data's split (default val)")
    p.add_argument("--seed", type=int, default=1, help="SynthRef scenes seed (default 1: not the reported 0)")
    p.add_argument("--limit", type=positive_int, default=600, help="first N samples (default 600)")
    p.add_argument(
        "--thresholds",
        type=probabilities,
        default=None,
        metavar="T,T,...",
        help="candidate thresholds in (0, 1) (default 0.2,0.25,...,0.5)",
    )
    p.add_argument("--image-root", default=None, help="where the images are (default: the LISA layout)")
    p.add_argument(
        "--synth-size", type=int_pair, default=None, metavar="MIN,MAX", help="SynthRef image size range in px"
    )
    add_generation_args(p, max_new_tokens=Flag(type=non_negative_int, default=64))
    p.add_argument("--out", default=None, help="write the sweep as JSON (never overwritten without --force)")
    p.add_argument("--force", action="store_true", help="overwrite --out")
    p.add_argument(
        "--write", action="store_true", help="store the chosen threshold in the model directory's config.json"
    )
    add_progress_arg(p)
    add_model_args(p, adapters=False, cells_help="; the chosen threshold is for that resolution")
    add_predictor_args(p, ("refine",))
    return p


def run(args) -> int:
    from dataclasses import fields
    from pathlib import Path

    from stamp.cli.common import check_out_file
    from stamp.eval.calibrate import DEFAULT_THRESHOLDS, CalibrationJob, format_table, run_calibration

    if args.out:
        check_out_file(Path(args.out))  # before the model loads
    same = {f.name for f in fields(CalibrationJob)} - {"thresholds", "overwrite"}
    job = CalibrationJob(
        **{name: getattr(args, name) for name in same},
        thresholds=tuple(args.thresholds or DEFAULT_THRESHOLDS),
        overwrite=args.force,
    )
    summary = run_calibration(job, progress=not args.no_progress)
    n = summary["results"][0]["metrics"]["n_samples"]
    print(
        f"{summary['data']} {summary['split']} seed {summary['seed']}, refine {summary['refine']}, "
        f"{n} samples (model's threshold was {summary['threshold_before']})"
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
