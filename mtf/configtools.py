"""Strict YAML/dict -> frozen dataclass conversion shared by every component config.

Each component owns one frozen dataclass (``SimConfig``, ``EtlConfig``, ``TrainConfig`` ...);
``mtf.config.MtfConfig`` nests them. This module knows nothing about the components: it turns
a nested mapping into a dataclass tree, rejecting unknown keys and wrong types with a message
that names the dotted key, and applies ``section.key=value`` overrides from the command line.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import types
import typing
from typing import Any, Mapping, Sequence, TypeVar

import yaml

from mtf.errors import UserError

T = TypeVar("T")
# Scientific notation YAML 1.1 leaves as a string ("1e-3", "-2E+4"); plain float() would also
# accept "nan" / "inf", which a config should spell explicitly as .nan / .inf.
_FLOAT_WITHOUT_DOT = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


class ConfigError(UserError, ValueError):
    """A config file or override is invalid; the message names the dotted key."""


def check_positive(section: str, **values: float) -> None:
    """Raise a ValueError naming ``<section>.<name>`` for the first value <= 0 (or NaN)."""
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{section}.{name} must be > 0, got {value!r}")


def check_non_negative(section: str, **values: float) -> None:
    """Raise a ValueError naming ``<section>.<name>`` for the first value < 0 (or NaN)."""
    for name, value in values.items():
        if not value >= 0:
            raise ValueError(f"{section}.{name} must be >= 0, got {value!r}")


def check_probability(section: str, **values: float) -> None:
    """Raise a ValueError naming ``<section>.<name>`` for a value outside [0, 1] (or NaN)."""
    for name, value in values.items():
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{section}.{name} must be in [0, 1], got {value!r}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):   # "bool | 'auto'", not "Union"
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert ``value`` to annotation ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if len(errors) == 1 else
                          f"{key}: expected {_type_name(tp)}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping for section {tp.__name__}, "
                              f"got {type(value).__name__} {value!r}")
        return from_dict(tp, value, prefix=key)
    if origin in (tuple, list):
        if isinstance(value, str) or not isinstance(value, Sequence):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key}: expected {len(args)} items, got {len(value)}")
            items = [_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            item_tp = args[0] if args else Any
            items = [_convert(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__} {value!r}")
        ktp, vtp = args or (Any, Any)
        return {_convert(k, ktp, f"{key}.<key>"): _convert(v, vtp, f"{key}.{k}")
                for k, v in value.items()}
    if typing.get_origin(tp) is typing.Literal:
        if value not in args:
            raise ConfigError(f"{key}: must be one of {list(args)}, got {value!r}")
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected bool, got {type(value).__name__} {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected int, got {type(value).__name__} {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT_WITHOUT_DOT.fullmatch(value.strip()):
            return float(value)     # YAML 1.1 reads '1e-3' (no dot) as a string
        raise ConfigError(f"{key}: expected float, got {type(value).__name__} {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (dt.date, dt.datetime)):  # YAML reads 2026-01-01 as a date
            return value.isoformat()
        raise ConfigError(f"{key}: expected str, got {type(value).__name__} {value!r}")
    raise ConfigError(f"{key}: unsupported config type {_type_name(tp)}")


def from_dict(cls: type[T], data: Mapping[str, Any], prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise ConfigError."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f" in section '{prefix}'" if prefix else ""
        raise ConfigError(f"unknown config key{'s' if len(unknown) > 1 else ''} "
                          f"{', '.join(_join(prefix, k) for k in unknown)}{where}; "
                          f"known keys: {', '.join(sorted(fields))}")
    kwargs = {name: _convert(v, hints[name], _join(prefix, name)) for name, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as exc:
        # __post_init__ range checks raise plain ValueErrors (the dataclasses are also built
        # in code); from a config they become one ConfigError line naming the dotted key.
        raise ConfigError(_validation_message(prefix or cls.__name__, str(exc))) from exc


def _validation_message(section: str, message: str) -> str:
    """One line naming the key: 'train.bcq' + 'bcq.lam must ...' -> 'train.bcq.lam must ...';
    a message without the section's name gets it in front ('etl: session_gap_s must ...')."""
    message = " ".join(message.split())
    last = section.rsplit(".", 1)[-1]
    if message.startswith(f"{section}."):
        return message
    if message.startswith(f"{last}."):
        return f"{section}{message[len(last):]}"
    return f"{section}: {message}"


def check_moved(data: Mapping[str, Any], moved: Mapping[str, str]) -> None:
    """Raise ConfigError naming the new key for every old (dotted) key present in ``data``.

    ``moved`` maps an old key (``"train.bcq.gamma"``) to its new home (``"mdp.gamma"``) or to
    a sentence saying why it is gone.
    """
    found = []
    for old, new in moved.items():
        node: Any = data
        for part in old.split("."):
            if not isinstance(node, Mapping) or part not in node:
                break
            node = node[part]
        else:
            found.append(f"{old}: {new}" if new.startswith("removed") else f"{old} is now {new}")
    if found:
        raise ConfigError(f"config key{'s have' if len(found) > 1 else ' has'} moved: "
                          f"{'; '.join(found)} (see README, Configuration)")


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def parse_override(text: str) -> tuple[list[str], Any]:
    """``'train.batch_size=512'`` -> (['train', 'batch_size'], 512). Values are parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    path = [p for p in key.strip().split(".") if p]
    if not path:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        return path, yaml.safe_load(raw) if raw.strip() else ""
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: a YAML date like 2026-13-01
        raise ConfigError(f"override {text!r}: the value is not valid YAML "
                          f"({_yaml_problem(exc)}); fix it, or quote a string value") from None


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a deep copy of ``data`` with dotted ``key=value`` overrides applied."""
    out: dict[str, Any] = json.loads(json.dumps(data, default=str)) if data else {}
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {part} is not a section")
            node = child
        node[path[-1]] = value
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """Dataclass tree -> plain dict (tuples become lists), for JSON sidecars."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return plain(cfg)


def read_yaml(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path!r} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path!r} is not valid YAML: {_yaml_problem(exc)}") \
            from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path!r} must hold a mapping at top level")
    return data


def _yaml_problem(exc: Exception) -> str:
    """A YAML parse error in one line: the problem and where (line, column; 1-based)."""
    problem = getattr(exc, "problem", None)
    mark = getattr(exc, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return " ".join(str(exc).split())
