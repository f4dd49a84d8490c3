"""Typed, frozen configs: YAML files plus dotted command-line overrides.

Every component defines one frozen dataclass for its settings (next to the code that uses it).
This module turns YAML and `key.sub=value` overrides into those dataclasses, checking every key
and type: a misspelled key is an error that names it (and suggests the closest valid key),
never a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, TypeVar

import yaml

from coachlm.errors import CoachError

T = TypeVar("T")


class ConfigError(CoachError, ValueError):
    """A config key or value is wrong; the message names the dotted key."""


def _suggest(key: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1)
    return f" (did you mean '{close[0]}'?)" if close else f" (valid keys: {', '.join(valid)})"


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check (and gently convert) one value against a type annotation."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {tp}")
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{key}: must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} settings, got {value!r}")
        return from_dict(tp, value, prefix=f"{key}.")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        item = args[0] if args else Any
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML reads "1e-4" as a string
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise ConfigError(f"{key}: expected a path, got {value!r}")
    return value


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build the dataclass `cls` from a (nested) mapping; unknown keys raise ConfigError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(f"unknown config key '{prefix}{key}'{_suggest(key, sorted(fields))}")
        default = _default(fields[key])
        if dataclasses.is_dataclass(default) and isinstance(value, Mapping):
            # A partial nested mapping changes only the keys it names: the rest keep this
            # field's own default (e.g. a trainer's tuned TrainConfig), not the class defaults.
            value = merge(to_dict(default), value)
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    _yield_defaults(cls, data, kwargs, prefix)
    missing = [n for n, f in fields.items() if n not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"missing required config key '{prefix}{missing[0]}'")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as e:  # __post_init__ validation
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from None


def _yield_defaults(cls: type, data: Mapping[str, Any], kwargs: dict[str, Any],
                    prefix: str) -> None:
    """A setting the user gave wins over a default that would replace it.

    `cls.DEFAULT_YIELDS` maps a field (e.g. "epochs", default 1) to the nested key it replaces
    when set (("train", "max_steps")): given only the nested key, the field becomes None; given
    both, the conflict is an error naming both keys.
    """
    for name, (section, key) in getattr(cls, "DEFAULT_YIELDS", {}).items():
        nested = data.get(section)
        if not (isinstance(nested, Mapping) and key in nested):
            continue
        if name not in data:
            kwargs[name] = None
        elif data[name] is not None:
            raise ConfigError(f"both '{prefix}{name}' and '{prefix}{section}.{key}' are set, and "
                              f"{name} replaces {key}: set one of them (or {name}=null)")


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain (YAML-safe) dict of a config: paths become strings, tuples become lists."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, Mapping):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(cfg)


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """`["optim.lr=3e-4", "steps=10"]` -> `{"optim": {"lr": 0.0003}, "steps": 10}` (YAML values)."""
    out: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw.strip() else ""
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with an earlier one")
        node[parts[-1]] = value
    return out


def merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """`extra` over `base`, nested mappings merged key by key."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


def load(cls: type[T], path: str | Path | None = None, overrides: Sequence[str] = (),
         defaults: Mapping[str, Any] | None = None) -> T:
    """defaults < YAML file < overrides, validated into `cls`."""
    data: dict[str, Any] = dict(defaults or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from None
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"{path}: the top level must be a mapping of keys")
        data = merge(data, loaded)
    data = merge(data, parse_overrides(overrides))
    return from_dict(cls, data)


def load_options(cls: type[T], path: str | Path | None, overrides: Sequence[str] | None = (),
                 **named: Any) -> T:
    """A command's config: defaults < YAML file < named options < dotted overrides.

    `named` are the command's shorthand options (`--model M` gives model=M; a dotted name such
    as "ppo.algo" sets a nested key); options left unset (None, or an empty list) are skipped.
    """
    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return str(v) if isinstance(v, Path) else v

    given = {k: v for k, v in named.items()
             if v is not None and not (isinstance(v, (list, tuple)) and not v)}
    # JSON is YAML, so each value is read back as what it was (a path as a string, not parsed).
    named_overrides = [f"{k}={json.dumps(plain(v))}" for k, v in given.items()]
    return load(cls, path, [*named_overrides, *(overrides or ())])


def save(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def replace(cfg: T, **changes: Any) -> T:
    return dataclasses.replace(cfg, **changes)
