"""Typed settings from plain data: a dataclass built from a dict (YAML), a `section.key=value` override,
and each value coerced to its field's declared type, with one-line errors that name the key, the value
and the type, and suggest the closest name for a misspelt one.

Generic over any dataclass: depthtune.config declares the fields, this module reads them.
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any

import yaml

from .errors import DepthtuneError


def suggest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def describe(hint) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping",
             list: "a list", type(None): "null"}
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if typing.get_origin(hint) is list:
        return f"a list of {describe(args[0])}s" if args else "a list"
    return names.get(typing.get_origin(hint) or hint, str(hint))


def coerce(key: str, value: Any, hint) -> Any:
    """`value` as the field's declared type, or a one-line error naming the key, the value and the type.

    YAML has already parsed the text (`--set train.rank=8` gives 8); an integer is taken where a number
    is wanted, and a single string where a list of strings is wanted.
    """
    if hint is Any:
        return value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for option in args:
            try:
                return coerce(key, value, option)
            except DepthtuneError:
                continue
    elif hint is type(None):
        if value is None:
            return None
    elif hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 5e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint in (bool, str) or (origin or hint) is dict:
        if isinstance(value, origin or hint):
            return value
    elif origin is list:
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list):
            return [coerce(key, v, args[0]) for v in items] if args else items
    raise DepthtuneError(f"config key '{key}' wants {describe(hint)}, got {value!r}")


def _moved(key: str, renamed: dict | None) -> None:
    if renamed and key in renamed:
        raise DepthtuneError(f"config key '{key}' is now '{renamed[key]}'")


def from_dict(cls, data: dict | None, where: str = "", renamed: dict | None = None):
    """Build dataclass `cls` from a dict, refusing unknown keys with a suggestion (and a key that moved,
    `renamed` {old dotted key: new}, with its new name)."""
    data = data or {}
    if not isinstance(data, dict):
        raise DepthtuneError(f"config section '{where or 'top level'}' must be a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            _moved(f"{where}{key}", renamed)
            raise DepthtuneError(f"unknown config key '{where}{key}'{suggest(key, fields)}")
        sub = fields[key].default_factory if fields[key].default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub):
            value = from_dict(sub, value, f"{where}{key}.", renamed)
        else:
            value = coerce(f"{where}{key}", value, hints[key])
        kwargs[key] = value
    return cls(**kwargs)


def locate(cfg, dotted: str, renamed: dict | None = None) -> tuple[Any, str]:
    """-> (the dataclass holding `section.key`, key), refusing unknown names with a suggestion."""
    _moved(dotted, renamed)
    parts = dotted.split(".")
    obj = cfg
    for i, part in enumerate(parts):
        names = {f.name for f in dataclasses.fields(obj)}
        if part not in names:
            raise DepthtuneError(f"unknown config key '{'.'.join(parts[:i + 1])}'{suggest(part, names)}")
        if i == len(parts) - 1:
            if dataclasses.is_dataclass(getattr(obj, part)):
                raise DepthtuneError(f"'{dotted}' is a section; set one of its keys, e.g. {dotted}."
                                     f"{dataclasses.fields(getattr(obj, part))[0].name}=...")
            return obj, part
        obj = getattr(obj, part)
        if isinstance(obj, dict) and i == len(parts) - 2:  # a dict of overrides (distill.select.KEY)
            return obj, parts[-1]
        if not dataclasses.is_dataclass(obj):
            raise DepthtuneError(f"'{'.'.join(parts[:i + 1])}' is a value, not a section")


def set_key(cfg, dotted: str, value: Any, renamed: dict | None = None) -> None:
    """Set `section.key` on a nested dataclass: unknown names and values of the wrong type get one line."""
    obj, key = locate(cfg, dotted, renamed)
    if isinstance(obj, dict):
        obj[key] = value  # checked where the overrides are applied (config.side), against their section
    else:
        setattr(obj, key, coerce(dotted, value, typing.get_type_hints(type(obj))[key]))


def parse_override(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise DepthtuneError(f"--set expects key=value, got '{text}'")
    key, raw = text.split("=", 1)
    return key.strip(), yaml.safe_load(raw) if raw.strip() else None


