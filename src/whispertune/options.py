"""Options as typed dataclasses: one place defines an option, its default and its help.

The CLI, YAML/JSON config files and (later) the web UI are generated from these dataclasses, so a
default can never drift between entry points. A field's ``metadata`` carries:

- ``help``: the text shown by ``--help`` (the default is appended automatically);
- ``positional``: the field is a positional CLI argument instead of ``--flag``;
- ``choices``: allowed values;
- ``flag``: an explicit flag name when the field name is not the natural one;
- ``nargs``: argparse nargs for list fields.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

_MISSING = dataclasses.MISSING


class ConfigError(ValueError):
    """A config file or an option value the user gave is wrong."""


def _unwrap_optional(tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not _MISSING:
        return f.default
    if f.default_factory is not _MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return _MISSING


def _flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


# ``build``'s source when the values are the command line's: its errors then name the flag
# the user typed (``--manifest``), and a config file's errors the key written in it.
COMMAND_LINE = "command line"


def _named(f: dataclasses.Field, source: str) -> str:
    if source == COMMAND_LINE and not f.metadata.get("positional"):
        return _flag(f)
    return f.name


def _prefix(source: str) -> str:
    return "" if source == COMMAND_LINE else f"{source}: "


def add_options(parser: argparse.ArgumentParser, cls: type, config_file: bool = False) -> None:
    """Add one argument per dataclass field of ``cls`` to ``parser``."""
    _add_fields(parser, cls, config_file)
    if config_file:
        parser.add_argument(
            "--config",
            type=Path,
            default=None,
            help="YAML or JSON file with options (keys as the long flags, '-' or '_'); "
            "flags given on the command line override it",
        )


def _add_fields(
    parser: argparse.ArgumentParser, cls: type, config_file: bool, defaults: Any = None
) -> None:
    # config_file: a required option may come from the file, so argparse must not demand it
    # defaults: the enclosing field's default instance, whose values the help shows (a nested
    # group may default differently where it is nested: the server's long-form options)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("cli") is False:
            continue
        tp = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):  # nested options: their flags sit beside ours
            nested = _field_default(f)
            _add_fields(parser, tp, config_file, nested if isinstance(nested, tp) else None)
            continue
        default = getattr(defaults, f.name) if defaults is not None else _field_default(f)
        help_text = f.metadata.get("help", "")
        kwargs: dict[str, Any] = {}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        origin = typing.get_origin(tp)
        if f.metadata.get("positional"):
            if origin in (list, tuple):
                kwargs["nargs"] = f.metadata.get("nargs", "+")
                tp = typing.get_args(tp)[0]
            elif default is not _MISSING:
                kwargs["nargs"] = "?"
                kwargs["default"] = default
            parser.add_argument(f.name, type=_converter(tp), help=help_text, **kwargs)
            continue
        # Defaults are applied from the dataclass, not argparse, so that a config file can sit
        # between them: CLI flag > config file > dataclass default.
        kwargs["default"] = argparse.SUPPRESS
        if default is not _MISSING and default is not None and default != []:
            shown = default if not isinstance(default, Path) else str(default)
            help_text = f"{help_text} (default: {shown})" if help_text else f"(default: {shown})"
        required = default is _MISSING and not config_file
        if default is _MISSING and config_file and "required" not in help_text:
            help_text = f"{help_text} (required: here or in --config)"
        if tp is bool:
            parser.add_argument(
                _flag(f),
                action=argparse.BooleanOptionalAction,
                help=help_text,
                dest=f.name,  # the field, whatever the flag is called
                **kwargs,
            )
            continue
        if origin in (list, tuple):
            kwargs["nargs"] = f.metadata.get("nargs", "+")
            tp = typing.get_args(tp)[0]
        parser.add_argument(
            _flag(f),
            type=_converter(tp),
            help=help_text,
            dest=f.name,  # --temperature fills temperatures
            required=required,
            metavar=f.metadata.get("metavar"),
            **kwargs,
        )


def _converter(tp: Any):
    if tp in (int, float, str):
        return tp
    if tp is Path:
        return Path
    return str


def load_config_file(path: Path) -> dict[str, Any]:
    """Read a YAML or JSON options file into a flat dict with snake_case keys."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file: {e.strerror}") from e
    try:
        if str(path).endswith(".json"):
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # yaml and json raise different types
        raise ConfigError(f"{path}: not valid YAML/JSON: {e}") from e
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value at the top level")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build(cls: type[T], values: dict[str, Any], source: str = "options") -> T:
    """Create ``cls`` from a dict, coercing types and rejecting unknown keys with a clear error."""
    hints = typing.get_type_hints(cls)
    names = {f.name: f for f in dataclasses.fields(cls) if f.init}
    values = dict(values)
    nested: dict[str, Any] = {}
    for name in list(names):
        tp = _unwrap_optional(hints[name])
        if dataclasses.is_dataclass(tp) and not isinstance(values.get(name), tp):
            own = option_names(tp)
            sub = values.pop(name, None) or {}
            sub.update({k: values.pop(k) for k in list(values) if k in own})
            default = _field_default(names[name])
            if isinstance(default, tp):  # the enclosing class's own defaults for the group
                base = {g.name: getattr(default, g.name) for g in dataclasses.fields(tp) if g.init}
                sub = {**base, **sub}
            nested[name] = build(tp, sub, source)
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(
            f"{source}: unknown option(s) {', '.join(unknown)}; known: "
            f"{', '.join(sorted(option_names(cls)))}"
        )
    kwargs = {}
    for name, value in values.items():
        tp = _unwrap_optional(hints[name])
        if value is not None:
            if tp is Path:
                value = Path(value)
            elif tp in (int, float) and not isinstance(value, bool):
                try:
                    value = tp(value)
                except (TypeError, ValueError) as e:
                    raise ConfigError(
                        f"{_prefix(source)}{_named(names[name], source)} must be a "
                        f"{tp.__name__}: {value!r}"
                    ) from e
            elif typing.get_origin(tp) in (list, tuple) and isinstance(value, str):
                value = [value]
        choices = names[name].metadata.get("choices")
        if choices and value is not None and value not in choices:
            raise ConfigError(
                f"{_prefix(source)}{_named(names[name], source)} must be one of "
                f"{', '.join(map(str, choices))}"
            )
        kwargs[name] = value
    kwargs.update(nested)
    missing = [n for n, f in names.items() if _field_default(f) is _MISSING and n not in kwargs]
    if missing:
        raise ConfigError(
            f"{_prefix(source)}missing required option(s): "
            + ", ".join(_named(names[n], source) for n in missing)
        )
    return cls(**kwargs)


def from_args(cls: type[T], ns: argparse.Namespace) -> T:
    """Options from parsed CLI args, layered over a ``--config`` file when one was given."""
    values: dict[str, Any] = {}
    config = getattr(ns, "config", None)
    if config is not None:
        values.update(load_config_file(config))
    names = option_names(cls)
    values.update({k: v for k, v in vars(ns).items() if k in names})
    return build(cls, values, source=str(config) if config else COMMAND_LINE)


def option_names(cls: type) -> set[str]:
    """All option names of ``cls``, nested option dataclasses included (flattened)."""
    hints = typing.get_type_hints(cls)
    names: set[str] = set()
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = _unwrap_optional(hints[f.name])
        names |= option_names(tp) if dataclasses.is_dataclass(tp) else {f.name}
    return names


def to_dict(obj: Any) -> dict[str, Any]:
    """A flat, JSON-friendly dict of an options dataclass (Paths as strings): nested option
    groups are flattened, so the keys are the flags' names, as ``build`` reads them back."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            out.update(to_dict(v))
        else:
            out[f.name] = _jsonable(dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v)
    return out


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def schema(cls: type, group: str = "") -> list[dict[str, Any]]:
    """One dict per option of ``cls`` (nested groups flattened, in ``--help`` order), for a UI
    to build its form from the same definitions as the CLI: ``name`` (the config key),
    ``flag``, ``group`` (the dotted path of its option group, "" at the top), ``type``
    ("str", "int", "float", "bool", "path", "list[float]", ...), ``default`` (JSON-friendly;
    None when there is none), ``help``, ``choices`` (or None), ``required``."""
    hints = typing.get_type_hints(cls)
    rows: list[dict[str, Any]] = []
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("cli") is False:
            continue
        tp = _unwrap_optional(hints[f.name])
        if dataclasses.is_dataclass(tp):
            rows += schema(tp, f"{group}.{f.name}" if group else f.name)
            continue
        default = _field_default(f)
        rows.append(
            {
                "name": f.name,
                "flag": None if f.metadata.get("positional") else _flag(f),
                "group": group,
                "type": _type_name(tp),
                "default": None if default is _MISSING else _jsonable(default),
                "help": f.metadata.get("help", ""),
                "choices": list(f.metadata["choices"]) if "choices" in f.metadata else None,
                "required": default is _MISSING,
            }
        )
    return rows


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (list, tuple):
        return f"list[{_type_name(typing.get_args(tp)[0])}]"
    if tp is Path:
        return "path"
    return getattr(tp, "__name__", str(tp))
