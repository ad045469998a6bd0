"""The commands written in the shipped recipes (configs/*.yaml headers) work as written.

Every header command parses and its config loads with its overrides; the two recipes for the authors'
models (STAMP-2B full fine-tune, STAMP-7B LoRA) run for two steps with tiny stand-ins for their model and
data paths (a tiny stock Qwen2-VL folder written by transformers 4.57.1, and a LISA-layout data root), and
the model they save segments an image."""

import re
import shlex
import sys
from pathlib import Path

import pytest
from helpers import random_image

from stamp.cli import build_parser, main
from stamp.train.config import TrainConfig
from stamp.yaml_config import load_config

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "data"))
from datafixtures import write_coco_root  # noqa: E402

STOCK_QWEN2VL = ROOT / "tests" / "fixtures" / "authors_checkpoints" / "base"
RECIPES = sorted(p for p in (ROOT / "configs").rglob("*.yaml") if "accelerate" not in p.parts)
SHORT_RUN = [
    "run.steps=2",
    "run.save_every=2",
    "run.precision=fp32",
    "run.threads=1",
    "optim.batch_size=1",
    "optim.grad_accum=1",
    "optim.warmup_steps=1",
    "model.min_cells=4",
    "model.max_cells=9",
]


def header_commands(path: Path) -> list[list[str]]:
    """`stamp ...` commands of a recipe's opening comment block, shell-split (comments dropped)."""
    commands = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        if not re.match(r"\s*(\w+=\S+\s+)*stamp\s", line.lstrip("#")):
            continue  # prose
        words = shlex.split(line.lstrip("#"), comments=True)
        while words and "=" in words[0] and not words[0].startswith("-"):  # VAR=value prefixes
            words = words[1:]
        if words[:1] == ["stamp"]:
            commands.append(words)
    return commands


def stand_ins(argv: list[str], model: Path, data: Path, out: Path) -> list[str]:
    """The command with its placeholder paths (/models/..., /data/...) replaced by test folders."""
    replaced = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and value.startswith("/models/"):
            arg = f"{key}={model}"
        elif sep and value.startswith("/data/"):
            arg = f"{key}={data}"
        replaced.append(arg)
    return replaced + [f"run.out_dir={out}"]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_recipe_header_commands_parse_and_load(recipe, monkeypatch):
    monkeypatch.chdir(ROOT)
    commands = header_commands(recipe)
    if not commands:
        assert "python " in recipe.read_text().splitlines()[1], f"{recipe.name} names no command"
    for argv in commands:
        args, extra = build_parser().parse_known_args(argv[1:])
        assert args.command == "train" and Path(args.config).resolve() == recipe.resolve()
        overrides = [a for a in list(args.overrides) + extra if "=" in a and "STEPS" not in a]
        load_config(TrainConfig, args.config, overrides)


@pytest.mark.parametrize("name", ["stamp-2b-finetune.yaml", "stamp-7b-lora.yaml"])
def test_authors_recipe_runs_as_written(name, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    (tmp_path / "data").mkdir()
    data = write_coco_root(tmp_path / "data")
    argv = header_commands(ROOT / "configs" / name)[0]
    run = tmp_path / "run"
    assert main(stand_ins(argv, STOCK_QWEN2VL, data, run)[1:] + SHORT_RUN + ["--no-progress"]) == 0
    model = run / "checkpoints" / "step_0000002" / "model"
    adapter = (model / "adapter_config.json").is_file()
    assert adapter == ("lora" in name) and (adapter or (model / "config.json").is_file())
    image = tmp_path / "in.png"
    random_image(64, 80).save(image)
    out = tmp_path / "seg"
    seg = ["segment", str(image), "--prompt", "Segment the box.", "--model", str(model), "--out", str(out)]
    seg += ["--base-model", str(STOCK_QWEN2VL)] if adapter else []
    assert main(seg + ["--answer-prefix", "<|seg|>", "--max-new-tokens", "2", "--refine", "none"]) == 0
    assert (out / "result.json").is_file()


def test_paper_reproduction_commands_expand_and_parse(tmp_path, monkeypatch):
    """docs/EVALUATION.md's "Reproducing the paper" block, run by bash with `stamp` recording its
    arguments: every command it issues parses, with the authors' protocol, and names an existing flag."""
    import subprocess

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # --device cuda is checked when parsed:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)  # as on the GPU machine these lines are for
    text = (ROOT / "docs" / "EVALUATION.md").read_text()
    section = text.split("## Reproducing the paper", 1)[1]
    script = section.split("```bash\n", 1)[1].split("```", 1)[0]
    log = tmp_path / "calls"
    stub = f'stamp() {{ printf "%s\\0" "$@" >> {log}; printf "\\n" >> {log}; }}\n'
    subprocess.run(["bash", "-euc", stub + script], check=True)
    calls = [c.rstrip("\0").split("\0") for c in log.read_text().split("\0\n") if c.strip("\0\n")]
    assert len(calls) == 32  # 2 models x 8 splits x (raw, SAM)
    for argv in calls:
        args = build_parser().parse_args(argv)
        assert (
            args.command == "eval"
            and args.protocol == "authors"
            and args.split in {"val", "testA", "testB", "test"}
        )
        assert args.data.split(":")[0] in {"refcoco", "refcoco+", "refcocog"}
        assert args.refine == "auto" or args.refine.startswith("sam-authors:")
        assert ("7B" in args.model) == (args.base_model is not None)
