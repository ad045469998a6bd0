"""Every `stamp ...` command written in the README and docs/ (and the bundled model's recipe) parses as
written, its config and overrides load where it trains, and the README's first example runs as written.
Synopsis lines (with [optional] parts) and the shell loop of docs/EVALUATION.md (tests/test_recipes.py
runs that one through bash) are left out."""

import re
import shlex
from pathlib import Path

import pytest

from stamp.cli import build_parser, main
from stamp.recipes import find_recipe
from stamp.train.config import TrainConfig
from stamp.yaml_config import load_config

ROOT = Path(__file__).resolve().parents[1]
DOCS = [
    ROOT / "README.md",
    *sorted((ROOT / "docs").glob("*.md")),
    ROOT / "configs" / "tiny-synth" / "README.md",
]


def doc_commands() -> list[tuple[str, str]]:
    """(file name, command line) of every `stamp` line in a ```bash block of the docs."""
    found = []
    for doc in DOCS:
        for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), re.S):
            for line in block.splitlines():
                line = line.strip()
                if re.match(r"(\w+=\S+\s+)*stamp\s", line) and "[" not in line and "$" not in line:
                    found.append((doc.name, line))
    return found


COMMANDS = doc_commands()


def test_the_docs_have_commands():
    assert len(COMMANDS) >= 25 and {name for name, _ in COMMANDS} >= {
        "README.md",
        "MODEL_CARD.md",
        "serving.md",
    }


@pytest.mark.parametrize(
    "line", [c[1] for c in COMMANDS], ids=[f"{n}:{c[1][:50]}" for n, c in enumerate(COMMANDS)]
)
def test_doc_command_parses(line, monkeypatch):
    import torch

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # --device cuda is checked when parsed:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)  # as on the GPU machine the line is for
    words = shlex.split(line, comments=True)
    while "=" in words[0]:  # VAR=value prefixes
        words = words[1:]
    words = words[: words.index(">")] if ">" in words else words
    args, extra = build_parser().parse_known_args(words[1:])
    overrides = list(getattr(args, "overrides", None) or []) + extra
    assert all("=" in e for e in extra), f"unrecognized arguments in {line!r}: {extra}"
    if args.command == "train":
        load_config(TrainConfig, find_recipe(args.config), overrides)


def test_readme_first_example_runs_as_written(tmp_path, monkeypatch):
    """The README's first two commands (SynthRef scenes, then the bundled model on one of them)."""
    monkeypatch.chdir(tmp_path)
    readme = [line for name, line in COMMANDS if name == "README.md"]
    synth, segment = readme[0], readme[1]
    assert synth.startswith("stamp data synth") and segment.startswith("stamp segment")
    assert main(shlex.split(synth, comments=True)[1:] + ["--no-progress"]) == 0
    assert main(shlex.split(segment, comments=True)[1:]) == 0
    assert (tmp_path / "out" / "result.json").is_file() and (tmp_path / "out" / "overlay.png").is_file()


def test_readme_folder_example_answers_correctly(tmp_path, monkeypatch):
    """The README's folder example, on the scenes its first command writes: every answer is right (no
    scene has a green object, and the bundled model says so for each, with no mask)."""
    import json

    monkeypatch.chdir(tmp_path)
    readme = [line for name, line in COMMANDS if name == "README.md"]
    folder = next(line for line in readme if "train2014/ " in line)
    assert main(shlex.split(readme[0], comments=True)[1:] + ["--no-progress"]) == 0
    instances = json.loads((tmp_path / "synth" / "refcoco" / "instances.json").read_text())
    assert "green" not in {a["colour"] for a in instances["annotations"]}
    assert main(shlex.split(folder, comments=True)[1:]) == 0
    results = sorted((tmp_path / "many").glob("*/result.json"))
    assert len(results) == 4
    for path in results:
        result = json.loads(path.read_text())
        assert "no green object" in result["text"].lower(), result["text"]
        assert all(m["area"] == 0 for m in result["masks"]), path


def test_every_results_file_is_cited_by_a_document():
    """docs/results/ holds what the documents cite (by path, or by the folder a table reads from); the
    history of runs is in git, not in the tree."""
    docs = [ROOT / "README.md", *(ROOT / "docs").glob("*.md"), *(ROOT / "configs").rglob("README.md")]
    text = "\n".join(p.read_text() for p in docs)
    uncited = []
    for f in sorted((ROOT / "docs" / "results").rglob("*")):
        if f.is_dir() or f.name == "README.md":
            continue
        rel = f.relative_to(ROOT)
        folders = [f"{p}/" for p in rel.parents if str(p) not in (".", "docs", "docs/results")]
        if str(rel) not in text and not any(d in text for d in folders):
            uncited.append(str(rel))
    assert not uncited, uncited
