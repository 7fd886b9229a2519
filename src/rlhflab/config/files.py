"""Configs from YAML presets and files, ``--set`` overrides, and dict <-> dataclass conversion with type checks.

Unknown keys and malformed values raise :class:`UserError` with one line that names the key and what would be valid.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import types
import typing
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml

from rlhflab.config.checks import validate
from rlhflab.config.schema import Config
from rlhflab.errors import UserError

# ----------------------------------------------------------------------------------------------------------------
# dict <-> dataclass with type checks


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    return getattr(tp, "__name__", str(tp)).replace("NoneType", "null")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert the harmless cases (int → float, '3e-5' → float)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except UserError as err:
                errors.append(str(err))
        raise UserError(errors[0])
    if origin is Literal:
        if value not in args:
            raise UserError(f"{key}: {value!r} is not valid; choose one of {', '.join(map(str, args))}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise UserError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise UserError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=key + ".")
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if not isinstance(value, bool):
            raise UserError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise UserError(f"{key}: expected a number, got {value!r}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{key}: expected a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} for {key}")


def from_dict(cls: type, data: dict, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a (nested) dict; unknown keys and bad values raise :class:`UserError`."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise UserError(f"unknown config key '{prefix}{unknown[0]}'; valid keys here: {', '.join(names)}")
    data = {k: _LEGACY_VALUES.get(prefix + k, {}).get(v, v) if isinstance(v, bool) else v for k, v in data.items()}
    return cls(**{k: _coerce(v, hints[k], prefix + k) for k, v in data.items()})


_LEGACY_VALUES = {
    "train.activation_checkpointing": {False: "none", True: "full"},
    "data.chat_template": {False: "off", True: "on"},  # YAML reads a bare on / off as a boolean
}
"""Values that older configs (and run directories) hold for options that have since grown more choices, and
booleans that YAML makes of words."""


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass (read from its source)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for stmt, nxt in zip(body, body[1:]):
        if isinstance(stmt, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[stmt.target.id] = nxt.value.value  # type: ignore[union-attr]
    return docs


# ----------------------------------------------------------------------------------------------------------------
# presets, files, overrides


def preset_names() -> list[str]:
    return sorted(
        p.name.removesuffix(".yaml") for p in resources.files("rlhflab.presets").iterdir() if p.name.endswith(".yaml")
    )


def _read_yaml(text: str, source: str) -> dict:
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise UserError(f"{source}: malformed YAML{where}: {getattr(err, 'problem', err)}") from None
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping of config sections at the top level")
    return data


def load_preset_dict(name: str) -> dict:
    names = preset_names()
    if name not in names:
        raise UserError(f"unknown preset {name!r}; available presets: {', '.join(names)}")
    text = resources.files("rlhflab.presets").joinpath(f"{name}.yaml").read_text()
    data = _read_yaml(text, f"preset {name}")
    data.setdefault("preset", name)
    return data


def load_file_dict(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"--config: file {path!r} does not exist")
    return _read_yaml(p.read_text(), path)


def apply_override(data: dict, assignment: str) -> None:
    """Apply one ``dotted.key=value`` to a nested dict; the value is parsed as YAML (so 'true', '3', 'null')."""
    if "=" not in assignment:
        raise UserError(f"--set {assignment!r}: expected dotted.key=value, e.g. --set train.lr=1e-5")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise UserError(f"--set {assignment!r}: empty part in key {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise UserError(f"--set {assignment!r}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def build_config(preset: str | None = None, config_file: str | None = None, overrides: list[str] = ()) -> Config:
    """Preset or file, then overrides, then validation: the one way a Config is made from user input."""
    if preset and config_file:
        raise UserError("give either --preset or --config, not both")
    data = load_preset_dict(preset) if preset else load_file_dict(config_file) if config_file else {}
    for assignment in overrides:
        apply_override(data, assignment)
    cfg = from_dict(Config, data)
    validate(cfg)
    return cfg


def save_config(cfg: Config, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def load_config(path: Path) -> Config:
    cfg = from_dict(Config, load_file_dict(str(path)))
    validate(cfg)
    return cfg


def describe_fields(cls: type = Config, prefix: str = "") -> list[str]:
    """Lines 'key (type, default): doc' for every field, nested sections included (for --help-config)."""
    docs, lines = field_docs(cls), []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            lines += describe_fields(tp, prefix + f.name + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        if isinstance(default, list) and default and dataclasses.is_dataclass(default[0]):
            default = [to_dict(d) for d in default]
        lines.append(f"  {prefix}{f.name} = {default!r}  ({_type_name(tp)})\n      {docs.get(f.name, '')}")
    return lines
