"""The `stamp` command line (`stamp --help`, or `python -m stamp`): one module per command.

    main.py       the dispatcher: parser, errors as one line (exit 2), quiet third parties
    args.py       the parser class, argument types, the groups several commands share (model, predictor,
                  decoding, output, progress) and the options generated from a dataclass's fields
    common.py     what commands do at run time (the predictor of the arguments, printing, rank exits)
    demo.py segment.py chat.py train.py eval.py calibrate.py compare.py data.py export.py serve.py bench.py

Each command module has `add_parser(subparsers)` and `run(args) -> exit status`. Nothing in the
package imports this one.
"""

from stamp.cli.main import build_parser, main, quiet_third_parties, run_and_exit

__all__ = ["build_parser", "main", "quiet_third_parties", "run_and_exit"]
