"""The one config mechanism: dataclass <-> dict, TOML files and ``--section.key=value`` overrides.

Every config of the project is a (nested) frozen dataclass. ``load_config(cls, path, overrides)``
merges a partial TOML table onto the defaults of ``cls()`` (so a section keeps its own defaults,
e.g. fine-tuning's optimizer settings), then applies the command line's dotted overrides, each
coerced by its annotation. Unknown keys are errors with a "did you mean"; an error from a file
names the file, one from an override names the override.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the config schema."""


def nearest(name: str, candidates: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.5)
    return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    """Coerce ``value`` (from TOML, JSON or a CLI string) to ``annotation``, or raise naming ``key``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: cannot be {value!r}")
    if origin is Literal:
        for choice in args:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise ConfigError(f"{key} must be one of {', '.join(map(repr, args))}, got {value!r}")
    if origin in (tuple, list):
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()] if value.strip() else []
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if origin is tuple:
            if len(args) != len(value):
                raise ConfigError(f"{key} must have {len(args)} items, got {len(value)}")
            return tuple(
                _coerce(v, a, f"{key}[{i}]")
                for i, (v, a) in enumerate(zip(args, value, strict=True))
            )
        return [_coerce(v, args[0] if args else Any, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a table, got {value!r}")
        return from_dict(annotation, value, prefix=f"{key}.")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                f = float(value)
            except ValueError:
                raise ConfigError(f"{key} must be an integer, got {value!r}") from None
            if f.is_integer():
                return int(f)
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key} must be a number, got {value!r}") from None
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    return value


def field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def from_dict(cls: type[T], data: dict[str, Any], *, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a (nested) dict; unknown keys are an error naming the key."""
    types_ = field_types(cls)
    for name in data:
        if name not in types_:
            raise ConfigError(
                f"unknown config key '{prefix}{name}'{nearest(name, types_)}"
                f" (valid keys in this section: {', '.join(types_)})"
            )
    kwargs = {name: _coerce(value, types_[name], prefix + name) for name, value in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except ValueError as e:
        raise ConfigError(str(e)) from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A JSON/TOML-ready nested dict of a config dataclass (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def _parse_override(item: str, cls: type) -> tuple[list[str], Any]:
    """``section.key=value`` -> (path of field names, coerced value); errors name the override."""
    item = item[2:] if item.startswith("--") else item
    if "=" not in item:
        raise ConfigError(f"--{item}: an override must look like --section.key=value")
    dotted, raw = item.split("=", 1)
    parts = dotted.split(".")
    node_cls = cls
    for i, part in enumerate(parts):
        types_ = field_types(node_cls)
        where = ".".join(parts[:i])
        if part not in types_:
            close = difflib.get_close_matches(part, list(types_), n=1, cutoff=0.5)
            hint = ", ".join(f"{where}.{c}" if where else c for c in close)  # the nearest one
            raise ConfigError(
                f"--{dotted}: unknown key"
                + (f"; did you mean {hint}?" if close else f" (valid: {', '.join(types_)})")
            )
        annotation = types_[part]
        if i < len(parts) - 1:
            if not dataclasses.is_dataclass(annotation):
                raise ConfigError(
                    f"--{dotted}: {'.'.join(parts[: i + 1])} is a value, not a section"
                )
            node_cls = annotation
        elif dataclasses.is_dataclass(annotation):
            raise ConfigError(
                f"--{dotted}: is a section; set one of its keys (--{dotted}.KEY=VALUE)"
            )
    try:
        return parts, _coerce(raw, annotation, dotted)
    except ConfigError as e:
        raise ConfigError(f"--{item}: {e}") from None


def apply_overrides(data: dict[str, Any], overrides: typing.Sequence[str], cls: type) -> dict:
    """Apply ``section.key=value`` strings to a nested dict, checking each key against ``cls``.

    An error names the override (``--decoding.num_beam: unknown key; did you mean ...``).
    """
    data = json.loads(json.dumps(data))  # deep copy of plain data
    for item in overrides:
        parts, value = _parse_override(item, cls)
        node = data
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return data


def read_toml(path: str | Path) -> dict[str, Any]:
    """A TOML file as a dict, with one-line errors for a missing or malformed file. A ``.json``
    file (a run folder's ``config.json``, the resolved config of that run) is read as JSON."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.suffix == ".json":
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON: {e}") from None
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None


def _merge(base: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """``given`` laid over ``base``: tables merge key by key, anything else replaces."""
    out = dict(base)
    for key, value in given.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    cls: type[T], path: str | Path | None = None, overrides: typing.Sequence[str] = ()
) -> T:
    """``cls()`` with a TOML file (one table per section) merged on, then dotted overrides.

    A partial table keeps the defaults of ``cls()`` for the keys it leaves out: a section's
    defaults are those of the command's own config (``FinetuneRunConfig().optim`` is not
    ``OptimConfig()``).
    """
    data = to_dict(cls())
    if path is not None:
        data = _merge(data, read_toml(path))
    final = apply_overrides(data, overrides, cls)  # an unknown or ill-typed override fails here
    try:
        return from_dict(cls, final)
    except ConfigError:
        if path is None:
            raise
    try:
        from_dict(cls, data)
    except ConfigError as e:  # the file alone is wrong: name it
        raise ConfigError(f"{path}: {e}") from None
    return from_dict(cls, final)  # the file is fine, an override broke a check: raise that


def section_help(cls: type) -> str:
    """``"Sections: model data ..."``: the override sections of ``cls``, for a command's epilog."""
    return "Sections: " + " ".join(field_types(cls)) + "."
