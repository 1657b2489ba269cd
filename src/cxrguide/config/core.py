"""The config machinery: type-checked dataclasses from YAML, and one CLI flag per field.

``_f(default, help, **meta)`` declares a field; its metadata (``help``, ``metavar``, ``flag``,
``aliases``) becomes the flag's. Values are checked against the annotations on load, so a typo
or a wrong type names its field.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from cxrguide.errors import ConfigError
from cxrguide.files import atomic_write_text

T = TypeVar("T")


def _check(value: Any, tp: Any, where: str) -> Any:
    """Coerce ``value`` to the annotation ``tp`` or raise a ConfigError naming ``where``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is Literal:
        if value not in get_args(tp):
            choices = ", ".join(repr(a) for a in get_args(tp))
            raise ConfigError(f"{where}: {value!r} is not one of {choices}")
        return value
    if origin in (list, tuple):
        if isinstance(value, str) or not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        (item,) = get_args(tp)[:1] or (Any,)
        items = [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return items if origin is list else tuple(items)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str | Path):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    return value


def from_dict(cls: type[T], data: Any, where: str = "config") -> T:
    """Build ``cls`` from a mapping, rejecting unknown keys and wrongly typed values."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    kwargs = {k: _check(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"{where}: {err}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate()
    return obj


def to_dict(obj: Any) -> Any:
    """Plain YAML-able structure (paths as strings)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def save_yaml(obj: Any, path: str | Path) -> None:
    """Atomically: a kill or a full disk never leaves a half-written config behind."""
    atomic_write_text(path, yaml.safe_dump(to_dict(obj), sort_keys=False))


def load_config(cls: type[T], path: str | Path | None = None, overrides: dict | None = None) -> T:
    """Defaults < YAML file < overrides (already-typed values, e.g. from CLI flags)."""
    data: dict[str, Any] = load_yaml(path) if path else {}
    where = str(path) if path else "config"
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return from_dict(cls, data, where)


def _flag_type(tp: Any) -> tuple[dict[str, Any], bool]:
    """argparse kwargs for a field annotation, and whether it is a list."""
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return _flag_type(args[0])
    if origin is Literal:
        choices = get_args(tp)
        return {"choices": choices, "type": type(choices[0])}, False
    if origin in (list, tuple):
        inner, _ = _flag_type(get_args(tp)[0])
        return inner, True
    if tp is bool:
        return {"action": argparse.BooleanOptionalAction}, False
    if tp in (int, float, str, Path):
        return {"type": tp}, False
    return {"type": str}, False


def add_config_flags(
    parser: argparse.ArgumentParser, cls: type, exclude: tuple[str, ...] = ()
) -> None:
    """Add ``--config`` and one ``--field-name`` flag per dataclass field (help from metadata)."""
    parser.add_argument("--config", type=Path, metavar="FILE.yaml", help="YAML config file")
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in exclude:
            continue
        kwargs, is_list = _flag_type(hints[field.name])
        flag = field.metadata.get("flag") or "--" + field.name.replace("_", "-")
        help_text = field.metadata.get("help", "")
        default = field.default if field.default is not dataclasses.MISSING else None
        if default is not None and not is_list and kwargs.get("action") is None:
            help_text = f"{help_text} (default: {default})".strip()
        if is_list:  # `--seeds 0 1 2` or `--seeds 0 --seeds 1 ...` (default None: no leftovers)
            kwargs = {**kwargs, "action": "extend", "nargs": "+"}
        metavar = field.metadata.get("metavar")
        if metavar and kwargs.get("action") is not argparse.BooleanOptionalAction:
            kwargs["metavar"] = metavar
        aliases = field.metadata.get("aliases", ())
        parser.add_argument(flag, *aliases, dest=field.name, default=None, help=help_text, **kwargs)


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Resolve a step config from ``--config`` plus the flags that were given."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    overrides = {k: v for k, v in vars(args).items() if k in names and v is not None}
    overrides = {k: str(v) if isinstance(v, Path) else v for k, v in overrides.items()}
    return load_config(cls, getattr(args, "config", None), overrides)


def mlflow_field() -> Any:
    """``--mlflow URI`` of every training step (one help text; the run's tracking, not its
    recipe: a resume may change it)."""
    return _f(
        None,
        "MLflow tracking URI (e.g. sqlite:///mlflow.db or http://host:5000): log the per-epoch "
        "scalars, the config and the run folder there too (needs the mlflow extra)",
        metavar="URI",
    )


def _f(default: Any, help: str, **meta: Any) -> Any:
    if isinstance(default, list | dict):
        return dataclasses.field(
            default_factory=lambda: type(default)(default), metadata={"help": help, **meta}
        )
    return dataclasses.field(default=default, metadata={"help": help, **meta})
