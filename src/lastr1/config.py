"""Typed dataclass configs loaded from YAML plus ``key=value`` CLI overrides.

Why our own ~150-line loader instead of a framework: every error must be one line that names the
field and the fix (``sft.lr: expected float, got 'fast'``), nested dataclasses must be addressable
with dots (``env.image_size=96``), and nothing may be silently ignored -- an unknown key is an error.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config problem, reported as one line naming the field."""


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp)).replace("typing.", "")


def _coerce(value: Any, tp: Any, path: str) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to type ``tp`` or raise ConfigError."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        is_none = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_none and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, path)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{path}: cannot be None")
    if origin is typing.Literal:
        choices = get_args(tp)
        if value not in choices:
            raise ConfigError(f"{path}: expected one of {list(choices)}, got {value!r}")
        return value
    if origin in (list, tuple):
        (inner, *_) = get_args(tp) or (Any,)
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()] if value.strip() else []
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]  # `--tasks 0`: YAML reads a lone id as a number
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}: expected a list, got {value!r}")
        items = [_coerce(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:  # a free mapping, checked later by whoever reads it (e.g. `lastr1 demo sft.*`)
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of fields (e.g. {path}.name=value), got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: expected a mapping of fields, got {value!r}")
        return from_dict(tp, value, prefix=path)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
            return False
        raise ConfigError(f"{path}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{path}: expected int, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, str):
            try:
                return int(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected int, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{path}: expected float, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{path}: expected a string, got {value!r}")
    raise ConfigError(f"{path}: unsupported config type {_type_name(tp)}")


def from_dict(cls: type[T], data: dict[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (possibly nested) dict, rejecting unknown keys."""
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else key
        if key not in names:
            close = difflib.get_close_matches(key, sorted(names), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(f"{path}: unknown field{hint}; known fields: {sorted(names)}")
        kwargs[key] = _coerce(value, hints[key], path)
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError, ZeroDivisionError) as exc:  # a zero divisor is a bad value too
        raise ConfigError(f"{prefix or cls.__name__}: {exc}") from None
    return obj


def to_dict(cfg: Any) -> dict[str, Any]:
    """A YAML-safe dict of a config (tuples become lists)."""
    return dataclasses.asdict(cfg)


def _set_path(data: dict[str, Any], dotted: str, value: str) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{dotted}: {key} is not a group of fields")
        node = child
    node[keys[-1]] = value


def merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_yaml(p: Path, what: str) -> dict[str, Any]:
    if not p.is_file():
        raise ConfigError(f"{what}: file not found: {p}")
    try:
        loaded = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what}: {p} is not valid YAML: {exc}".splitlines()[0]) from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what}: {p} must hold a mapping of fields at the top level")
    return loaded


PRESET_DIR = Path(__file__).parent / "presets"


def preset_names() -> list[str]:
    """The presets shipped with the package (``src/lastr1/presets/*.yaml``)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(preset: str) -> Path:
    """A shipped preset's file by name, or a user's preset YAML by path."""
    if preset in preset_names():
        return PRESET_DIR / f"{preset}.yaml"
    if preset.endswith((".yaml", ".yml")):
        return Path(preset)
    raise ConfigError(f"preset={preset!r} is unknown; use one of {preset_names()} or a path to a preset YAML")


def load_preset(preset: str, section: str) -> dict[str, Any]:
    """One command's section (``sft``, ``rl``, ``eval``, ...) of a preset, as a dict of fields.

    A preset is one YAML file with a section per command; a top-level ``shared`` block holds YAML
    anchors that sections reuse (``env: *env``) and is not a command's.
    """
    data = _read_yaml(preset_path(preset), f"preset={preset}")
    unknown = sorted(set(data) - {"shared", "sft", "rl", "eval", "make_demos", "demo"})
    if unknown:
        raise ConfigError(
            f"preset={preset}: unknown sections {unknown}; a preset has sft, rl, eval, make_demos"
        )
    block = data.get(section) or {}
    if not isinstance(block, dict):
        raise ConfigError(f"preset={preset}: section {section!r} must be a mapping of fields")
    return block


def parse_overrides(overrides: list[str] | None) -> dict[str, Any]:
    """``["a.b=1", "c=x"]`` → ``{"a": {"b": 1}, "c": "x"}`` (values read as YAML scalars)."""
    over: dict[str, Any] = {}
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value (e.g. env.image_size=96)")
        key, value = item.split("=", 1)
        try:
            parsed = yaml.safe_load(value) if value.strip() else value
        except yaml.YAMLError:
            raise ConfigError(
                f"{key.strip()}: {value!r} is not a valid value; quote it or use a plain number, word or list"
            ) from None
        _set_path(over, key.strip(), parsed)
    return over


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    preset: str | None = None,
    section: str | None = None,
) -> T:
    """Build ``cls`` from, in increasing priority: the dataclass defaults, a preset's ``section``,
    an optional YAML file, and ``key=value`` overrides.

    Defaults come from the dataclass, so an empty YAML is a valid config.
    """
    data: dict[str, Any] = {}
    if preset:
        if not section:
            raise ConfigError(f"preset={preset}: this command takes no preset")
        data = load_preset(preset, section)
    if path is not None:
        data = merge(data, _read_yaml(Path(path), "--config"))
    return from_dict(cls, merge(data, parse_overrides(overrides)))


def split_preset(overrides: list[str]) -> tuple[str | None, list[str]]:
    """Take ``preset=NAME`` out of a command's ``key=value`` overrides."""
    preset, rest = None, []
    for item in overrides:
        key, sep, value = item.partition("=")
        if sep and key.strip() == "preset":
            preset = value.strip()
        else:
            rest.append(item)
    return preset, rest


def save_config(cfg: Any, path: str | Path) -> None:
    """Write a config as YAML so a run can be reproduced with ``--config``."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
