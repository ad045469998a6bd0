"""`stamp export CHECKPOINT/model [--out DIR]`: a trained model as a bf16 copy (the bundled model's form)."""

from __future__ import annotations

from stamp.cli.args import add_command

EXAMPLES = """examples:
  stamp export runs/x/checkpoints/step_0001000/model --out runs/x/model-bf16
  stamp export runs/x/checkpoints/step_0001000/model            # writes ./model-bf16/"""


def add_parser(sub):
    p = add_command(
        sub,
        "export",
        "write a trained model in the bundled model's form: bf16 weights that load in fp32, config, tokenizer, processor",
        EXAMPLES,
    )
    p.add_argument("model_dir", metavar="MODEL_DIR", help="a model folder (e.g. a checkpoint's model/)")
    p.add_argument(
        "--out", default=None, help="output folder (default: ./NAME-bf16, NAME the model folder's name)"
    )
    p.add_argument("--force", action="store_true", help="replace an existing output folder")
    return p


def run(args) -> int:
    from pathlib import Path

    from stamp.bundled import export

    out = Path(args.out) if args.out else Path(f"{Path(args.model_dir).resolve().name}-bf16")
    if out.exists() and not args.force and (out.is_file() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty; use --force to replace it")
    print(f"wrote {export(args.model_dir, out, args.force)}")
    return 0
