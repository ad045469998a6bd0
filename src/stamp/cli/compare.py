"""`stamp compare A.json B.json`: two eval results on the same samples, with paired bootstrap intervals."""

from __future__ import annotations

from pathlib import Path

from stamp.cli.args import add_command, positive_int, probability

EXAMPLES = """examples:
  stamp compare a.json b.json
  stamp compare base.json new.json --json diff.json --resamples 5000"""


def add_parser(sub):
    p = add_command(
        sub,
        "compare",
        "compare two results.json of stamp eval on the same samples (paired bootstrap intervals)",
        EXAMPLES,
        description="B - A for cIoU, gIoU, N-acc, T-acc, VQA accuracy and their mean, recomputed from the "
        "per-sample records, with a paired bootstrap interval (the same resampled samples for both).",
    )
    p.add_argument("a", metavar="A.json", help="results of stamp eval (the baseline)")
    p.add_argument("b", metavar="B.json", help="results of stamp eval on the same samples")
    p.add_argument("--resamples", type=positive_int, default=2000, help="bootstrap draws (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    p.add_argument("--level", type=probability, default=0.95, help="interval level (default 0.95)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the comparison as JSON")
    p.add_argument("--force", action="store_true", help="overwrite --json OUT")
    return p


def run(args) -> int:
    from stamp.eval.compare import compare, format_comparison, load_results
    from stamp.outputs.files import ensure_writable, write_json

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
        write_json(Path(args.json), doc, indent=1)
        print(f"wrote {args.json}")
    return 0
