"""Training recipes by name: `stamp train tiny-synth` from any folder.

A recipe is a YAML file of the project's `configs/` folder. They ship inside the package as
`stamp/assets/configs/` (a link to the checkout's `configs/`, packaged with the other assets), so a
wheel install finds them as well as a checkout. A path to a YAML file is always accepted as it is.
"""

from __future__ import annotations

from pathlib import Path

from stamp.yaml_config import ConfigError

PACKAGE_DIR = Path(__file__).parent / "assets" / "configs"
CHECKOUT_DIR = Path(__file__).resolve().parents[2] / "configs"


def recipe_dirs() -> list[Path]:
    """The folders searched for recipes by name, first match wins."""
    dirs = []
    for d in (PACKAGE_DIR, CHECKOUT_DIR):
        if d.is_dir() and all(d.resolve() != seen.resolve() for seen in dirs):
            dirs.append(d)
    return dirs


def recipe_names() -> list[str]:
    """Every shipped recipe's name (its path under configs/ without `.yaml`), sorted."""
    names = set()
    for d in recipe_dirs():
        names.update(p.relative_to(d).with_suffix("").as_posix() for p in d.rglob("*.yaml"))
    return sorted(n for n in names if not n.startswith(("accelerate/", "experiments/")))


def find_recipe(name_or_path: str | Path) -> Path:
    """The YAML file for `name_or_path`: an existing file as given, else the shipped recipe of that name
    (`tiny-synth`, `tiny-synth.yaml`, `tiny-synth/final`, `configs/tiny-synth.yaml`). ConfigError when
    there is none, listing the shipped names."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    text = str(name_or_path)
    rel = text[len("configs/") :] if text.startswith("configs/") else text
    candidates = [rel] if rel.endswith((".yaml", ".yml")) else [f"{rel}.yaml", f"{rel}.yml"]
    if not path.is_absolute():
        for d in recipe_dirs():
            for c in candidates:
                if (d / c).is_file():
                    return d / c
    names = recipe_names()
    shown = ", ".join(n for n in names if "/" not in n) or "none in this installation"
    raise ConfigError(f"config file not found: {text} (give a YAML path or a shipped recipe: {shown})")
