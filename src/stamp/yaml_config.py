"""Typed configs: dataclasses are the schema, YAML files hold instances, `key=value` overrides.

    cfg = load_config(TrainConfig, "configs/tiny-synth.yaml", ["optim.lr=3e-4", "run.steps=100"])

Unknown keys are errors that name the closest valid key; values are coerced to the field's type
(parsed with `yaml.safe_load`, never `eval`).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def _field_types(cls) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass `tp` is, or the one inside an Optional[...]; else None."""
    if dataclasses.is_dataclass(tp):
        return tp
    found = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
    return found[0] if found else None


def _unknown(key: str, valid: list[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(valid))}"
    return ConfigError(f"unknown config key '{where}{key}'{hint}")


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, prefix=f"{where}.")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(k, kt, where): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str):  # YAML 1.1 reads "3e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is float:
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is bool and not isinstance(value, bool):
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is str and not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass `cls` from a (nested) dict; unknown keys and bad types raise ConfigError."""
    types_ = _field_types(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in types_:
            raise _unknown(key, list(types_), prefix)
        kwargs[key] = _coerce(value, types_[key], f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {exc}") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def _list_item_type(tp: Any) -> Any | None:
    """The item type of a list[...] field (also inside Optional[...]); None if `tp` is not a list."""
    for t in (tp, *typing.get_args(tp)):
        if typing.get_origin(t) in (list, tuple):
            args = typing.get_args(t)
            return args[0] if args else Any
    return None


def apply_overrides(data: dict[str, Any], overrides: list[str], cls: type) -> dict[str, Any]:
    """Apply `a.b.c=value` overrides (value parsed as YAML) to a nested dict, checking keys against `cls`.

    A number addresses an item of a list field, `*` every item: `data.sources.0.path=/data/lisa` sets
    the path of the first source (the item must exist), `data.sources.*.path=/data/lisa` of all.
    """
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. optim.lr=1e-4)")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        _set_path(data, key.strip().split("."), value, cls, key.strip())
    return data


def _set_path(node: Any, parts: list[str], value: Any, tp: Any, key: str, where: str = "") -> None:
    """Set `value` at `parts` below `node` (a dict for dataclass `tp`, or a list for a list type),
    copying the containers it passes through so the caller's data is never changed."""
    part, rest = parts[0], parts[1:]
    item_type = _list_item_type(tp) if isinstance(node, list) else None
    if isinstance(node, list) and part == "*":
        for i in range(len(node)):
            _set_path(node, [str(i), *rest], value, tp, key, where)
        return
    if isinstance(node, list):
        if not part.isdigit():
            raise ConfigError(f"'{where.rstrip('.')}' is a list: use an item number or *, e.g. '{where}0'")
        index = int(part)
        if index >= len(node):
            raise ConfigError(
                f"'{where}{part}': '{where.rstrip('.')}' has {len(node)} item(s) (numbered from 0)"
            )
        child_type = item_type
    else:
        types_ = _field_types(tp)
        if part not in types_:
            raise _unknown(part, list(types_), where)
        index, child_type = part, types_[part]
    if not rest:
        node[index] = value
        return
    section = None if _list_item_type(child_type) is not None else _dataclass_in(child_type)
    if section is not None:
        child = dict(node[index] or {}) if isinstance(node, list) else dict(node.get(index) or {})
        node[index] = child
        _set_path(child, rest, value, section, key, f"{where}{part}.")
    elif _list_item_type(child_type) is not None:
        current = node[index] if isinstance(node, list) else node.get(index)
        if not isinstance(current, list):
            raise ConfigError(
                f"'{where}{part}' has no items in the config to address with '{key}'; "
                f"set the whole list instead, e.g. {where}{part}=[...]"
            )
        child = list(current)
        node[index] = child
        _set_path(child, rest, value, child_type, key, f"{where}{part}.")
    else:
        raise ConfigError(f"'{where}{part}' is not a section; cannot set '{key}'")


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Read YAML `path` (optional), apply overrides, and validate into `cls`."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping")
    data = apply_overrides(data, overrides or [], cls)
    return from_dict(cls, data)
