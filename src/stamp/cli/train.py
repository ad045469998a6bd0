"""`stamp train RECIPE|CONFIG.yaml [key=value ...] [--resume]`: train per a typed YAML config."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from stamp.cli.args import EXIT_FAULT, add_command, add_progress_arg
from stamp.cli.common import exit_now, several_ranks

EXAMPLES = """examples:
  stamp train tiny-synth                         # a shipped recipe by name, from any folder
  stamp train configs/tiny-synth.yaml optim.lr=5e-4 run.steps=200
  stamp train tiny-synth --resume                # continue from the newest checkpoint
  accelerate launch --multi_gpu --num_processes 2 -m stamp train tiny-synth   # 2 ranks"""


def add_parser(sub):
    p = add_command(
        sub, "train", "train per a YAML config or shipped recipe, with key=value overrides", EXAMPLES
    )
    p.add_argument(
        "config", help="a shipped recipe's name (tiny-synth, stamp-2b-finetune, ...) or a YAML file"
    )
    p.add_argument(
        "overrides",
        nargs="*",
        help="overrides like optim.lr=3e-4 run.steps=100 (list items: data.sources.0.path=..., "
        "'data.sources.*.path=...')",
    )
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in run.out_dir")
    add_progress_arg(p, "log lines only")
    return p


def run(args) -> int:
    from stamp.eval.validation import validation_for
    from stamp.recipes import find_recipe
    from stamp.train.checkpoint import CheckpointWriteError, latest_checkpoint
    from stamp.train.config import TrainConfig
    from stamp.train.trainer import train
    from stamp.yaml_config import load_config

    cfg = load_config(TrainConfig, find_recipe(args.config), args.overrides)
    if args.resume:
        cfg = resumed_config(cfg, args.overrides)
    script = Path(sys.argv[0])  # `stamp`, `python -m stamp`, or a script that calls this command
    prog = "stamp" if script.name in ("stamp", "__main__.py") else f"python {shlex.quote(str(script))}"
    resume = f"{prog} train " + shlex.join([args.config, *args.overrides, "--resume"])
    try:
        last = train(cfg, resume=args.resume, progress=not args.no_progress, **validation_for(cfg))
    except KeyboardInterrupt:
        done = latest_checkpoint(Path(cfg.run.out_dir))
        if done is None:
            print("stamp: interrupted before the first checkpoint; nothing to resume", file=sys.stderr)
        else:
            print(f"stamp: interrupted; last checkpoint: {done}; resume with: {resume}", file=sys.stderr)
        return 130
    except CheckpointWriteError as err:  # e.g. a full disk: nothing of that checkpoint was left
        done = latest_checkpoint(Path(cfg.run.out_dir))
        safe = (
            f"the last complete checkpoint is {done.name} (resume with: {resume})"
            if done is not None
            else "no checkpoint was completed: free space and start again"
        )
        print(f"stamp train: error: {err}; {safe}", file=sys.stderr)
        return EXIT_FAULT
    if last is not None:
        print(f"last checkpoint: {last} (model: {last / 'model'})")
    if several_ranks():  # one rank of several: skip the teardown (see stamp.train.trainer.train)
        exit_now()
    return 0


def resumed_config(cfg, overrides: list[str]):
    """The config a resumed run continues under: the one its newest checkpoint recorded, not the
    recipe's (the run's own overrides are kept without repeating them). An override given with --resume
    that changes the run is refused (ConfigError); settings of the recipe that differ from the run's
    are said on stderr. `cfg` (the recipe with `overrides`) as it is when nothing was recorded."""
    import json

    from stamp.train.checkpoint import latest_checkpoint, recorded_config
    from stamp.train.config import TrainConfig
    from stamp.yaml_config import ConfigError, from_dict, to_dict

    last = latest_checkpoint(Path(cfg.run.out_dir))
    recorded = None if last is None else recorded_config(last)
    if recorded is None:
        return cfg
    given, run = _flat(json.loads(json.dumps(to_dict(cfg)))), _flat(recorded)
    run["run.stop_at_step"] = given.get("run.stop_at_step")  # where this invocation stops: never recorded
    changed = sorted(k for k in given.keys() | run.keys() if given.get(k) != run.get(k))
    keys = [o.split("=", 1)[0].strip() for o in overrides]
    overridden = [k for k in changed if any(_overrides(pattern, k) for pattern in keys)]
    allowed = [k for k in overridden if k in RESUME_MAY_CHANGE]
    refused = [k for k in overridden if k not in RESUME_MAY_CHANGE]
    if refused:
        raise ConfigError(
            f"--resume continues the run in {cfg.run.out_dir} with the settings it was started with; "
            + ", ".join(f"{k}={given.get(k)} (the run's: {run.get(k)})" for k in refused)
            + " would change it: drop the override(s), or start a new run (another run.out_dir)"
        )
    kept = [k for k in changed if k not in allowed]
    if kept:
        print(
            f"stamp train: resuming {last} with the run's own settings (recorded in its checkpoint): "
            + ", ".join(f"{k}={run.get(k)}" for k in kept),
            file=sys.stderr,
        )
    if allowed:
        print(
            f"stamp train: resuming {last} with "
            + ", ".join(f"{k}={given.get(k)} (the run's: {run.get(k)})" for k in allowed),
            file=sys.stderr,
        )
    resumed = from_dict(TrainConfig, recorded)
    resumed.run.stop_at_step = cfg.run.stop_at_step
    for key in allowed:
        section, name = key.split(".")
        setattr(getattr(resumed, section), name, getattr(getattr(cfg, section), name))
    return resumed


RESUME_MAY_CHANGE = (
    "run.steps",
    "run.stop_at_step",
    "run.save_every",
    "run.keep_checkpoints",
    "run.log_every",
    "run.eval_every",
    "run.threads",
    "run.device",
    "data.num_workers",
)
"""Settings an override may change on --resume (said on stderr): how long the run goes on and how this
invocation runs, not what it trains with. `run.stop_at_step` always comes from the invocation."""


def _flat(node, prefix: str = "") -> dict:
    """A nested config dict as {"optim.lr": 3e-4, "data.sources.0.kind": ..., ...}."""
    if isinstance(node, dict) and node:
        return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}{key}.").items()}
    if isinstance(node, list) and node and all(isinstance(v, dict) for v in node):
        return {k: v for i, value in enumerate(node) for k, v in _flat(value, f"{prefix}{i}.").items()}
    return {prefix.removesuffix("."): node}


def _overrides(pattern: str, key: str) -> bool:
    """Whether an override of `pattern` (a.b, a.0.b, a.*.b) sets flat key `key`."""
    from fnmatch import fnmatchcase

    return fnmatchcase(key, pattern) or fnmatchcase(key, pattern + ".*")
