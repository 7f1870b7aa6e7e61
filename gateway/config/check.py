"""Checking config values against their `Field`s: type conversion, ranges, choices and per-field
checks, one checker for the gateway's sections and plug-ins' options alike, plus finding a
plug-in and running its own cross-field hook. Problems are collected, not raised, so that every
one is reported at once, ordered by line.
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from gateway.config.locate import Locator, join_key
from gateway.core.fields import Field
from gateway.core.manifest import Manifest
from gateway.core.units import format_duration, format_size, parse_duration, parse_size

# --------------------------------------------------------------------------- problems


class Problems:
    """Every problem found, each naming its source, line and key path, so all go out at once."""

    def __init__(self, source: str, locator: Locator | None) -> None:
        self.source = source
        self.locator = locator
        self._items: list[tuple[int, int, str]] = []

    def add(self, path: str, message: str, *, line: int | None = None) -> None:
        if line is None and self.locator is not None and path:
            line = self.locator.line_of(path)
        where = self.source if line is None else f"{self.source}:{line}"
        text = f"{where}: {path}: {message}" if path else f"{where}: {message}"
        self._items.append((line or 0, len(self._items), text))

    def __bool__(self) -> bool:
        return bool(self._items)

    def sorted(self) -> list[str]:
        return [text for _, _, text in sorted(self._items)]


class _Bad(Exception):
    """A value failed its field; the message is the problem text."""


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    import difflib  # here: only a broken configuration needs it, not every `status` and start

    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def typename(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"float {value!r}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string {json.dumps(shown, ensure_ascii=False)}"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, _dt.datetime):
        return "datetime"
    if isinstance(value, _dt.date):
        return "date"
    if isinstance(value, _dt.time):
        return "time"
    return type(value).__name__


_EXPECTED = {
    "str": "expected a string",
    "int": "expected an integer",
    "float": "expected a number",
    "bool": "expected true or false",
    "path": "expected a path (a string)",
    "duration": 'expected a duration like "30 s"',
    "size": 'expected a size like "256 MiB"',
    "str-list": "expected an array of strings",
    "float-list": "expected an array of numbers",
    "table": "expected a table",
    "device": 'expected a bus number or a name like "/dev/i2c-1"',
}


def _expected(field: Field, value: Any) -> str:
    if field.choices is not None:
        wanted = "expected one of " + ", ".join(show(field, c) for c in field.choices)
    else:
        wanted = _EXPECTED[field.kind]
    return f"{wanted}, got {typename(value)}"


def show(field: Field, value: Any) -> str:
    """A converted value the way a person would write it in the file."""
    if field.kind == "duration" and isinstance(value, int | float):
        return format_duration(float(value))
    if field.kind == "size" and isinstance(value, int):
        return format_size(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _convert(field: Field, value: Any, base_dir: Path) -> Any:
    """The value of `field` from its TOML form, checked; raises _Bad with the message."""
    kind = field.kind
    out: Any
    if kind in ("str", "path"):
        if not isinstance(value, str):
            raise _Bad(_expected(field, value))
        if kind == "path":
            if not value:
                raise _Bad("expected a path, got an empty string")
            out = _resolve(value, base_dir)
        else:
            out = value
    elif kind == "device":
        if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
            raise _Bad(_expected(field, value))
        out = str(value)
    elif kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Bad(_expected(field, value))
        out = value
    elif kind == "float":
        if not _is_number(value):
            raise _Bad(_expected(field, value))
        out = float(value)
        if not math.isfinite(out):
            raise _Bad(f"must be a finite number, got {value}")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise _Bad(_expected(field, value))
        out = value
    elif kind in ("duration", "size"):
        if not isinstance(value, str) and not _is_number(value):
            raise _Bad(_expected(field, value))
        try:
            out = parse_duration(value) if kind == "duration" else parse_size(value)
        except ValueError as exc:
            raise _Bad(str(exc)) from None
    elif kind in ("str-list", "float-list"):
        if not isinstance(value, list | tuple):
            raise _Bad(_expected(field, value))
        items = []
        for n, item in enumerate(value):
            ok = isinstance(item, str) if kind == "str-list" else _is_number(item)
            if not ok:
                raise _Bad(f"{_expected(field, value).split(',')[0]}; item {n} is {typename(item)}")
            items.append(item if kind == "str-list" else float(item))
        out = tuple(items)
    else:  # table
        if not isinstance(value, dict):
            raise _Bad(_expected(field, value))
        out = copy.deepcopy(value)

    numbers = out if kind == "float-list" else (out,) if kind in _NUMERIC else ()
    for number in numbers:
        if field.min is not None and number < field.min:
            raise _Bad(f"must be at least {show(field, field.min)}, got {show(field, number)}")
        if field.max is not None and number > field.max:
            raise _Bad(f"must be at most {show(field, field.max)}, got {show(field, number)}")
    if field.choices is not None and out not in field.choices:
        choices = ", ".join(show(field, c) for c in field.choices)
        hint = ""
        if isinstance(out, str):
            hint = did_you_mean(out, [c for c in field.choices if isinstance(c, str)])
        raise _Bad(f"must be one of {choices}, got {show(field, out)}{hint}")
    if field.check is not None:
        try:
            message = field.check(out)
        except Exception as exc:  # a plug-in's check must not take the loader down
            message = f"check failed: {type(exc).__name__}: {exc}"
        if message:
            raise _Bad(message)
    return out


_NUMERIC = frozenset({"int", "float", "duration", "size"})


def _resolve(text: str, base_dir: Path) -> Path:
    """An absolute, normalised path; relative ones are taken from the config file's directory."""
    path = Path(text)
    if not path.is_absolute():
        path = base_dir / path
    return Path(os.path.normpath(path.absolute()))


def _default(field: Field, base_dir: Path) -> Any:
    if field.default is None:
        return None
    try:
        return _convert(replace(field, min=None, max=None, check=None), field.default, base_dir)
    except _Bad:
        return copy.deepcopy(field.default)


def check_table(
    problems: Problems,
    path: str,
    table: Mapping[str, Any],
    fields: Mapping[str, Field],
    base_dir: Path,
    *,
    skip: Iterable[str] = (),
    report_unknown: bool = True,
) -> dict[str, Any]:
    """Converted values of `table` by `fields`, defaults filled in; failures go to `problems`
    and leave their key out of the result."""
    skipped = set(skip)
    out: dict[str, Any] = {}
    for key, value in table.items():
        if key in skipped:
            continue
        keypath = join_key(path, key)
        field = fields.get(key)
        if field is None:
            if report_unknown:
                hint = did_you_mean(key, fields) or (
                    f"; known keys: {', '.join(fields)}" if fields else "; this table takes none"
                )
                problems.add(keypath, f"unknown key{hint}")
            continue
        try:
            out[key] = _convert(field, value, base_dir)
        except _Bad as exc:
            problems.add(keypath, str(exc))
    for key, field in fields.items():
        if key in table or key in skipped:
            continue
        if field.required:
            problems.add(join_key(path, key), "required key is missing")
        else:
            out[key] = _default(field, base_dir)
    return out


# --------------------------------------------------------------------------- plug-ins


def find_plugin(
    problems: Problems,
    path: str,
    what: str,
    name: str,
    available: Callable[[], list[str]],
    manifest: Callable[[str], Manifest],
) -> Manifest | None:
    """The manifest of the plug-in registered as `name`, its class and typed options loaded, or
    None after reporting why not."""
    try:
        names = available()
    except Exception as exc:
        problems.add(path, f"cannot list {what}s: {type(exc).__name__}: {exc}")
        return None
    if name not in names:
        hint = did_you_mean(name, names)
        listing = f" (available: {', '.join(names)})" if names else f" (no {what}s are installed)"
        problems.add(path, f"unknown {what} {name!r}{hint}{listing}")
        return None
    try:
        found = manifest(name)
        found.config  # noqa: B018 - loads the class and checks its options are typed
    except Exception as exc:
        problems.add(path, f"{what} {name!r} failed to load: {type(exc).__name__}: {exc}")
        return None
    return found


def plugin_rules(problems: Problems, path: str, cls: Any, options: Mapping[str, Any]) -> None:
    """A plug-in's rules spanning its own fields: the optional `check_config(options)` hook
    returns problem texts, each ideally starting with the key it is about (`"key: message"`)."""
    hook = getattr(cls, "check_config", None)
    if hook is None:
        return
    try:
        found = [str(text) for text in hook(dict(options))]
    except Exception as exc:
        found = [f"check_config failed: {type(exc).__name__}: {exc}"]
    for text in found:
        key, sep, rest = text.partition(": ")
        if sep and key in options:
            problems.add(join_key(path, key), rest)
        else:
            problems.add(path, text)
