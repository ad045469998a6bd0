"""`stamp data synth | tokenizer`: SynthRef in a real benchmark's on-disk format; the SynthRef tokenizer."""

from __future__ import annotations

import shlex
from pathlib import Path

from stamp.cli.args import Parser, add_command, add_progress_arg, positive_int

EXAMPLES = """examples:
  stamp data synth --out synth_refer --split val --n 200 --format refer
  stamp data tokenizer --out src/stamp/assets/tokenizer-synth --force   # rebuild the shipped tokenizer"""
SYNTH_EXAMPLES = """examples:
  stamp data synth --out synth_refer --split val --n 200 --format refer
  stamp eval --data refcoco:synth_refer --split val          # reads what the line above wrote
  stamp data synth --out synth_grefer --n 300 --format grefer   # then --data grefcoco:synth_grefer"""


def add_parser(sub):
    p = add_command(sub, "data", "data tools: stamp data synth, stamp data tokenizer", EXAMPLES)
    dsub = p.add_subparsers(dest="data_command", metavar="DATA_COMMAND", parser_class=Parser, required=True)
    synth = add_command(
        dsub,
        "synth",
        "write SynthRef in a real benchmark's on-disk format",
        SYNTH_EXAMPLES,
        description="Write SynthRef samples in a real benchmark's on-disk format, readable by stamp eval "
        "--data KIND:OUT (refer -> refcoco:OUT, grefer -> grefcoco:OUT, reasonseg -> reasonseg:OUT, "
        "llava -> llava:OUT/conversations.json) and by outside tools that read those formats.",
    )
    synth.add_argument("--out", required=True, help="output folder (written whole, then renamed into place)")
    synth.add_argument(
        "--split",
        default="val",
        choices=["train", "val", "test", "compositional"],
        help="SynthRef split to draw from (default val)",
    )
    synth.add_argument("--n", type=positive_int, default=100, help="number of samples (default 100)")
    synth.add_argument(
        "--format",
        default="refer",
        choices=["refer", "grefer", "reasonseg", "llava"],
        help="refer: RefCOCO in the LISA layout; grefer: gRefCOCO (with no-target requests); reasonseg: "
        "ReasonSeg's image + JSON pairs; llava: LLaVA conversations (VQA) (default refer)",
    )
    synth.add_argument("--seed", type=int, default=0, help="SynthRef scenes seed (default 0)")
    synth.add_argument("--force", action="store_true", help="replace an existing output folder")
    add_progress_arg(synth)
    tok = add_command(
        dsub,
        "tokenizer",
        "train the byte-level BPE tokenizer of the models trained from scratch on SynthRef",
        "examples:\n  stamp data tokenizer --out my-tokenizer",
    )
    tok.add_argument("--out", required=True, help="output folder (a transformers tokenizer)")
    tok.add_argument(
        "--samples", type=positive_int, default=20000, help="SynthRef train samples (default 20000)"
    )
    tok.add_argument("--vocab-size", type=positive_int, default=1024, help="vocabulary size (default 1024)")
    tok.add_argument("--force", action="store_true", help="replace an existing output folder")
    return p


def run(args) -> int:
    return _synth(args) if args.data_command == "synth" else _tokenizer(args)


def _refuse_existing(out: Path, force: bool) -> None:
    if out.exists() and not force and (out.is_file() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty; use --force to replace it")


def _synth(args) -> int:
    from stamp.data.synthref.export import EVAL_KINDS, export_synthref

    out = Path(args.out)
    _refuse_existing(out, args.force)
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
    results = shlex.quote(str(out / "results.json"))  # beside the data: not ./results.json of another run
    print(
        f"evaluate with: stamp eval --data {shlex.quote(f'{kind}:{where}')} --split {args.split} --out {results}"
    )
    return 0


def _tokenizer(args) -> int:
    from stamp.train.tokenizer import synthref_texts, train_synth_tokenizer

    out = Path(args.out)
    _refuse_existing(out, args.force)
    tok = train_synth_tokenizer(synthref_texts(args.samples), args.vocab_size)
    tok.save_pretrained(str(out))
    print(f"wrote {out} ({len(tok)} tokens)")
    return 0
