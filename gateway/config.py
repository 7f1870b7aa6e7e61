"""The gateway's configuration: one TOML file, checked strictly, every problem reported at once.

The gateway's own sections are declared as `Field` dicts exactly like a plug-in's options, and one
checker serves both: unknown keys (with a "did you mean"), wrong types, bad units, out-of-range
values. Rules spanning several fields sit right below the schema. tomllib gives no positions, so
a small locator scans the text to map key paths such as `sensor[1].interval` to line numbers;
every problem reads `{source}:{line}: {keypath}: {message}`.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import difflib
import ipaddress
import json
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import urlsplit

from gateway import plugins
from gateway.errors import ConfigError
from gateway.schema import Field
from gateway.units import format_duration, format_size, parse_duration, parse_size

__all__ = [
    "CLOCK",
    "DEVICE",
    "LOG",
    "MODULE",
    "SECTIONS",
    "SENSOR",
    "SPOOL",
    "UPLINK",
    "ClockConfig",
    "Config",
    "DeviceConfig",
    "LogConfig",
    "ModuleConfig",
    "SensorConfig",
    "SpoolConfig",
    "UplinkConfig",
    "load",
    "loads",
    "render",
    "sample_text",
]


# --------------------------------------------------------------------------- resolved config


@dataclass(frozen=True, kw_only=True)
class DeviceConfig:
    name: str
    key_file: Path


@dataclass(frozen=True, kw_only=True)
class SpoolConfig:
    path: Path
    max_size: int
    commit_interval: float


@dataclass(frozen=True, kw_only=True)
class UplinkConfig:
    url: str
    host: str
    port: int
    tls: bool
    topic_prefix: str
    client_id: str | None
    protocol: str
    ca_file: Path | None
    cert_file: Path | None
    key_file: Path | None
    username: str | None
    password_file: Path | None
    password_env: str | None
    insecure: bool
    batch_max_readings: int
    batch_max_age: float
    max_inflight: int
    keepalive: float
    reconnect_max: float


@dataclass(frozen=True, kw_only=True)
class ClockConfig:
    mode: str


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    level: str


@dataclass(frozen=True, kw_only=True)
class SensorConfig:
    id: str
    driver: str
    interval: float
    options: Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class ModuleConfig:
    id: str
    kind: str
    options: Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class Config:
    device: DeviceConfig
    spool: SpoolConfig
    uplink: UplinkConfig
    clock: ClockConfig
    log: LogConfig
    sensors: tuple[SensorConfig, ...]
    modules: tuple[ModuleConfig, ...]
    source: Path | None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict of the resolved configuration (without `source`, so the same
        settings hash the same wherever the file lives)."""
        return {
            "device": _plain(vars(self.device)),
            "spool": _plain(vars(self.spool)),
            "uplink": _plain(vars(self.uplink)),
            "clock": _plain(vars(self.clock)),
            "log": _plain(vars(self.log)),
            "sensors": [_plain(vars(s)) for s in self.sensors],
            "modules": [_plain(vars(m)) for m in self.modules],
        }


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, _dt.date | _dt.time):
        return value.isoformat()
    return value


# --------------------------------------------------------------------------- schema


def _nonempty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


_ID = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def _sensor_id(value: str) -> str | None:
    if _ID.match(value):
        return None
    return (
        f"invalid sensor id {value!r}: use lower-case letters, digits, '_' and '-', starting "
        "with a letter or digit (it prefixes SenML names like 'pm/pm2_5')"
    )


def _topic_prefix(value: str) -> str | None:
    if not value:
        return "must not be empty"
    if "+" in value or "#" in value:
        return f"{value!r} must not contain the MQTT wildcards '+' or '#'"
    if value.startswith("/") or value.endswith("/"):
        return f"{value!r} must not start or end with '/'"
    if "//" in value:
        return f"{value!r} must not contain an empty topic level ('//')"
    if "\0" in value:
        return "must not contain a NUL character"
    return None


DEVICE: Mapping[str, Field] = {
    "name": Field(
        "str", "Human name of this gateway, shown on dashboards and in health.", check=_nonempty
    ),
    "key_file": Field(
        "path",
        "The device's Ed25519 private key; its public key is the device identity (did:key).",
        default="/var/lib/depin-gateway/device.key",
    ),
}

SPOOL: Mapping[str, Field] = {
    "path": Field(
        "path",
        "SQLite file holding pending readings and sealed, unacknowledged batches.",
        default="/var/lib/depin-gateway/spool.db",
    ),
    "max_size": Field(
        "size",
        "Largest spool; past it the oldest unsent readings are dropped (with a signed receipt).",
        default="256 MiB",
        min=64 * 1024,
    ),
    "commit_interval": Field(
        "duration",
        "How long readings may wait in memory before a durable commit; 0 commits every reading.",
        default="30 s",
        min=0,
        max=3600,
    ),
}

UPLINK: Mapping[str, Field] = {
    "url": Field(
        "str",
        "Broker address: mqtt://host[:port] (plain text, port 1883) or mqtts://host[:port] "
        "(TLS, port 8883).",
        default="mqtt://127.0.0.1:1883",
    ),
    "topic_prefix": Field(
        "str",
        "Topic prefix of everything the gateway publishes; no '+', '#' or leading/trailing '/'.",
        default="depin/v1",
        check=_topic_prefix,
    ),
    "client_id": Field(
        "str",
        "MQTT client id; unset derives one from the device id.",
        default=None,
        check=_nonempty,
    ),
    "protocol": Field(
        "str",
        'MQTT version: "auto" (MQTT 5, falling back to 3.1.1), "5" or "3.1.1".',
        default="auto",
        choices=("auto", "5", "3.1.1"),
    ),
    "ca_file": Field(
        "path",
        "CA certificate(s) to verify the broker (mqtts:// only); unset uses the system "
        "trust store.",
        default=None,
    ),
    "cert_file": Field(
        "path",
        "Client certificate for TLS client authentication (mqtts:// only; needs key_file).",
        default=None,
    ),
    "key_file": Field(
        "path", "Private key of cert_file (mqtts:// only; needs cert_file).", default=None
    ),
    "username": Field("str", "MQTT user name.", default=None, check=_nonempty),
    "password_file": Field(
        "path",
        "File whose content (trailing newline stripped) is the MQTT password; needs username.",
        default=None,
    ),
    "password_env": Field(
        "str",
        "Environment variable holding the MQTT password; needs username.",
        default=None,
        check=_nonempty,
    ),
    "insecure": Field(
        "bool",
        "Allow plain-text mqtt:// to a broker that is not on this machine (readings and the "
        "password travel unencrypted).",
        default=False,
    ),
    "batch_max_readings": Field(
        "int",
        "A batch is sealed when it holds this many readings.",
        default=500,
        min=1,
        max=10000,
    ),
    "batch_max_age": Field(
        "duration",
        "A batch is sealed when its oldest reading is this old.",
        default="60 s",
        min=1,
        max=86400,
    ),
    "max_inflight": Field(
        "int", "Published batches awaiting PUBACK at once.", default=8, min=1, max=100
    ),
    "keepalive": Field("duration", "MQTT keep-alive interval.", default="60 s", min=5, max=3600),
    "reconnect_max": Field(
        "duration",
        "Cap of the jittered exponential reconnect backoff.",
        default="60 s",
        min=1,
        max=3600,
    ),
}

CLOCK: Mapping[str, Field] = {
    "mode": Field(
        "str",
        'Whether wall time is trusted: "auto" (detect NTP sync), "synced" or "unsynced".',
        default="auto",
        choices=("auto", "synced", "unsynced"),
    ),
}

LOG: Mapping[str, Field] = {
    "level": Field(
        "str",
        "Least severe level logged.",
        default="info",
        choices=("debug", "info", "warning", "error"),
    ),
}

#: keys every `[[sensor]]` has; the driver's own options (its CONFIG) come on top
SENSOR: Mapping[str, Field] = {
    "id": Field(
        "str",
        "Unique id: lower-case letters, digits, '_' and '-', starting with a letter or digit; "
        "prefixes the names of the sensor's readings (`id/quantity`).",
        check=_sensor_id,
    ),
    "driver": Field("str", "Registered driver name (entry point group depin_gateway.drivers)."),
    "interval": Field(
        "duration",
        "Time between reads; default is the driver's own (default_interval).",
        default=None,
        min=0.01,
    ),
}

#: keys every `[[module]]` has; the module's own options (its CONFIG) come on top
MODULE: Mapping[str, Field] = {
    "id": Field("str", "Unique id of this module instance.", check=_nonempty),
    "kind": Field("str", "Registered module name (entry point group depin_gateway.modules)."),
}

#: the single tables, in file order
SECTIONS: Mapping[str, Mapping[str, Field]] = {
    "device": DEVICE,
    "spool": SPOOL,
    "uplink": UPLINK,
    "clock": CLOCK,
    "log": LOG,
}
_ARRAYS = ("sensor", "module")
_TOP = (*SECTIONS, *_ARRAYS)


# --------------------------------------------------------------------------- locator


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


class _Locator:
    """Maps key paths (`sensor[1].interval`) to the line that defines them.

    Runs only on text tomllib accepted, so it may be lenient: it follows `[table]` and
    `[[array]]` headers, dotted keys, strings (multi-line too), arrays and inline tables.
    """

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.line = 1
        self.lines: dict[str, int] = {}
        self._arrays: dict[str, int] = {}
        with contextlib.suppress(IndexError, ValueError):  # best effort: keep what was found
            self._document()

    def line_of(self, path: str) -> int | None:
        """Line of `path`, else of its nearest enclosing table or key; None if none is known."""
        while path:
            if path in self.lines:
                return self.lines[path]
            cut = max(path.rfind("."), path.rfind("["))
            if cut <= 0:
                return None
            path = path[:cut]
        return None

    # ------------------------------------------------------------------ scanning
    def _peek(self, n: int = 1) -> str:
        return self.s[self.i : self.i + n]

    def _record(self, path: str, line: int) -> None:
        self.lines.setdefault(path, line)

    def _skip_ws(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in " \t":
            self.i += 1

    def _skip_to_eol(self) -> None:
        end = self.s.find("\n", self.i)
        self.i = len(self.s) if end < 0 else end

    def _skip_blank(self) -> None:
        """Whitespace, newlines and comments."""
        while self.i < len(self.s):
            c = self.s[self.i]
            if c in " \t\r":
                self.i += 1
            elif c == "\n":
                self.i += 1
                self.line += 1
            elif c == "#":
                self._skip_to_eol()
            else:
                return

    def _document(self) -> None:
        table = ""
        while True:
            self._skip_blank()
            if self.i >= len(self.s):
                return
            start = self.i
            if self.s[self.i] == "[":
                table = self._header()
            else:
                self._keyval(table)
            if self.i == start:  # not understood: skip the line rather than loop
                self._skip_to_eol()

    def _header(self) -> str:
        array = self._peek(2) == "[["
        self.i += 2 if array else 1
        parts = self._key()
        self._skip_ws()
        self.i += 2 if array else 1
        path = ""
        for n, part in enumerate(parts):
            path = _join(path, part)
            if array and n == len(parts) - 1:
                index = self._arrays.get(path, 0)
                self._arrays[path] = index + 1
                self._record(path, self.line)
                path = f"{path}[{index}]"
            elif path in self._arrays:
                path = f"{path}[{self._arrays[path] - 1}]"
            self._record(path, self.line)
        self._skip_to_eol()
        return path

    def _key(self) -> list[str]:
        parts: list[str] = []
        while True:
            self._skip_ws()
            c = self._peek()
            if c == '"':
                parts.append(self._basic_string())
            elif c == "'":
                end = self.s.index("'", self.i + 1)
                parts.append(self.s[self.i + 1 : end])
                self.i = end + 1
            else:
                m = _BARE_KEY.match(self.s, self.i)
                if m is None:
                    return parts
                parts.append(m.group())
                self.i = m.end()
            self._skip_ws()
            if self._peek() != ".":
                return parts
            self.i += 1

    def _basic_string(self) -> str:
        j = self.i + 1
        out: list[str] = []
        while self.s[j] != '"':
            if self.s[j] == "\\":
                out.append(self.s[j : j + 2])
                j += 2
            else:
                out.append(self.s[j])
                j += 1
        self.i = j + 1
        raw = "".join(out)
        try:
            return str(json.loads(f'"{raw}"'))
        except ValueError:
            return raw

    def _keyval(self, table: str) -> None:
        line = self.line
        parts = self._key()
        if not parts:
            return
        path = table
        for part in parts:
            path = _join(path, part)
            self._record(path, line)
        self._skip_ws()
        if self._peek() != "=":
            self._skip_to_eol()
            return
        self.i += 1
        self._skip_ws()
        self._value(path)

    def _value(self, path: str) -> None:
        c = self._peek()
        if self._peek(3) in ('"""', "'''"):
            quote = self._peek(3)
            end = self.s.index(quote, self.i + 3)
            while quote[0] == '"' and _escaped(self.s, end):
                end = self.s.index(quote, end + 1)
            end += 3
            while self.s[end : end + 1] == quote[0]:  # up to two quotes may close the content
                end += 1
            self.line += self.s.count("\n", self.i, end)
            self.i = end
        elif c == '"':
            self._basic_string()
        elif c == "'":
            self.i = self.s.index("'", self.i + 1) + 1
        elif c == "[":
            self.i += 1
            index = 0
            while True:
                self._skip_blank()
                if self._peek() in ("]", ""):
                    self.i += 1
                    return
                item = f"{path}[{index}]"
                self._record(item, self.line)
                self._value(item)
                index += 1
                self._skip_blank()
                if self._peek() == ",":
                    self.i += 1
        elif c == "{":
            self.i += 1
            while True:
                self._skip_blank()
                if self._peek() in ("}", ""):
                    self.i += 1
                    return
                if self._peek() == ",":
                    self.i += 1
                    continue
                before = self.i
                self._keyval(path)
                if self.i == before:
                    self.i += 1
        else:
            while self.i < len(self.s) and self.s[self.i] not in ",]}\n#":
                self.i += 1


def _escaped(s: str, pos: int) -> bool:
    """Whether the character at `pos` is preceded by an odd number of backslashes."""
    n = 0
    while pos - n - 1 >= 0 and s[pos - n - 1] == "\\":
        n += 1
    return n % 2 == 1


# --------------------------------------------------------------------------- problems


class _Problems:
    def __init__(self, source: str, locator: _Locator | None) -> None:
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


def _did_you_mean(word: str, candidates: Iterable[str]) -> str:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def _typename(value: Any) -> str:
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
        wanted = "expected one of " + ", ".join(_show(field, c) for c in field.choices)
    else:
        wanted = _EXPECTED[field.kind]
    return f"{wanted}, got {_typename(value)}"


def _show(field: Field, value: Any) -> str:
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
                raise _Bad(
                    f"{_expected(field, value).split(',')[0]}; item {n} is {_typename(item)}"
                )
            items.append(item if kind == "str-list" else float(item))
        out = tuple(items)
    else:  # table
        if not isinstance(value, dict):
            raise _Bad(_expected(field, value))
        out = copy.deepcopy(value)

    numbers = out if kind == "float-list" else (out,) if kind in _NUMERIC else ()
    for number in numbers:
        if field.min is not None and number < field.min:
            raise _Bad(f"must be at least {_show(field, field.min)}, got {_show(field, number)}")
        if field.max is not None and number > field.max:
            raise _Bad(f"must be at most {_show(field, field.max)}, got {_show(field, number)}")
    if field.choices is not None and out not in field.choices:
        choices = ", ".join(_show(field, c) for c in field.choices)
        hint = ""
        if isinstance(out, str):
            hint = _did_you_mean(out, [c for c in field.choices if isinstance(c, str)])
        raise _Bad(f"must be one of {choices}, got {_show(field, out)}{hint}")
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


def _check_table(
    problems: _Problems,
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
        keypath = _join(path, key)
        field = fields.get(key)
        if field is None:
            if report_unknown:
                hint = _did_you_mean(key, fields) or (
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
            problems.add(_join(path, key), "required key is missing")
        else:
            out[key] = _default(field, base_dir)
    return out


# --------------------------------------------------------------------------- cross-field rules


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_uplink(problems: _Problems, up: dict[str, Any], given: Mapping[str, Any]) -> None:
    """Parse the URL into host/port/tls and check the rules between uplink keys."""
    url = up.get("url")
    tls: bool | None = None
    if isinstance(url, str):
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = parts.hostname or ""
        try:
            port = parts.port
        except ValueError:
            port = -1
        if scheme not in ("mqtt", "mqtts"):
            shown = f"{scheme}://" if scheme else "no scheme"
            problems.add(
                "uplink.url", f"unsupported scheme {shown} in {url!r}; use mqtt:// or mqtts://"
            )
        elif not host:
            problems.add("uplink.url", f"no host in {url!r}; expected mqtt[s]://host[:port]")
        elif port == -1 or port == 0:
            problems.add("uplink.url", f"invalid port in {url!r}; expected 1..65535")
        elif parts.username is not None or parts.password is not None:
            problems.add(
                "uplink.url",
                "credentials do not belong in the url; set username and password_file or "
                "password_env",
            )
        elif parts.path not in ("", "/") or parts.query or parts.fragment:
            problems.add("uplink.url", f"unexpected path or query in {url!r}")
        else:
            tls = scheme == "mqtts"
            up["host"] = host
            up["port"] = port if port is not None else (8883 if tls else 1883)
            up["tls"] = tls
            if not tls and not up.get("insecure") and not _is_loopback(host):
                problems.add(
                    "uplink.url",
                    f"plain-text MQTT to {host!r}, which is not this machine, would send "
                    "readings and credentials unencrypted; use mqtts:// or set insecure = true",
                )
    if tls is False:
        for key in ("ca_file", "cert_file", "key_file"):
            if key in given:
                problems.add(
                    f"uplink.{key}", "TLS option with a plain-text mqtt:// url; use mqtts://"
                )
    for have, need in (("cert_file", "key_file"), ("key_file", "cert_file")):
        if have in given and need not in given:
            problems.add(
                f"uplink.{have}",
                f"{have} needs {need} too (a client certificate goes with its private key)",
            )
    if "password_file" in given and "password_env" in given:
        problems.add("uplink.password_env", "set password_file or password_env, not both")
    for key in ("password_file", "password_env"):
        if key in given and "username" not in given:
            problems.add(f"uplink.{key}", f"{key} needs username")
    for key in ("ca_file", "cert_file", "key_file", "password_file"):
        path = up.get(key)
        if isinstance(path, Path):
            if not path.exists():
                problems.add(f"uplink.{key}", f"{key} not found: {path}")
            elif not path.is_file():
                problems.add(f"uplink.{key}", f"{key} is not a file: {path}")
    env = up.get("password_env")
    if isinstance(env, str) and env and env not in os.environ:
        problems.add("uplink.password_env", f"environment variable {env!r} is not set")


def _plugin(
    problems: _Problems,
    path: str,
    what: str,
    name: str,
    available: Callable[[], list[str]],
    load_class: Callable[[str], Any],
) -> Any | None:
    """The plug-in class registered as `name`, or None after reporting why not."""
    try:
        names = available()
    except Exception as exc:
        problems.add(path, f"cannot list {what}s: {type(exc).__name__}: {exc}")
        return None
    if name not in names:
        hint = _did_you_mean(name, names)
        listing = f" (available: {', '.join(names)})" if names else f" (no {what}s are installed)"
        problems.add(path, f"unknown {what} {name!r}{hint}{listing}")
        return None
    try:
        cls = load_class(name)
        config = getattr(cls, "CONFIG", {})
        if not isinstance(config, Mapping) or not all(
            isinstance(k, str) and isinstance(f, Field) for k, f in config.items()
        ):
            raise TypeError("its CONFIG is not a mapping of str to gateway.schema.Field")
    except Exception as exc:
        problems.add(path, f"{what} {name!r} failed to load: {type(exc).__name__}: {exc}")
        return None
    return cls


def _plugin_rules(problems: _Problems, path: str, cls: Any, options: Mapping[str, Any]) -> None:
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
            problems.add(_join(path, key), rest)
        else:
            problems.add(path, text)


def _items(problems: _Problems, doc: Mapping[str, Any], name: str) -> list[Any]:
    value = doc.get(name, [])
    if not isinstance(value, list):
        problems.add(name, f"expected an array of tables [[{name}]], got {_typename(value)}")
        return []
    return value


def _sensors(problems: _Problems, doc: Mapping[str, Any], base_dir: Path) -> list[SensorConfig]:
    items = _items(problems, doc, "sensor")
    if "sensor" not in doc or (isinstance(doc["sensor"], list) and not items):
        problems.add("sensor", "no sensors: at least one [[sensor]] table is required")
    out: list[SensorConfig] = []
    seen: dict[str, str] = {}
    for n, table in enumerate(items):
        path = f"sensor[{n}]"
        if not isinstance(table, dict):
            problems.add(path, f"expected a table, got {_typename(table)}")
            continue
        head = _check_table(problems, path, table, SENSOR, base_dir, report_unknown=False)
        fields = dict(SENSOR)
        cls = None
        if isinstance(head.get("driver"), str):
            cls = _plugin(
                problems,
                f"{path}.driver",
                "driver",
                head["driver"],
                plugins.drivers,
                plugins.driver_class,
            )
        if cls is not None:
            fields.update({k: f for k, f in cls.CONFIG.items() if k not in SENSOR})
            values = _check_table(problems, path, table, fields, base_dir, skip=SENSOR)
            values.update(head)
            if "interval" not in table:
                values["interval"] = float(getattr(cls, "default_interval", 60.0))
        else:
            values = head
        if "id" in values:
            sid = values["id"]
            if sid in seen:
                problems.add(
                    f"{path}.id", f"duplicate sensor id {sid!r} (first used by {seen[sid]})"
                )
            else:
                line = problems.locator.line_of(f"{path}.id") if problems.locator else None
                seen[sid] = path if line is None else f"{path}, line {line}"
        if cls is not None and all(k in values for k in fields):
            options = {k: values[k] for k in fields if k not in SENSOR}
            _plugin_rules(problems, path, cls, options)
            out.append(
                SensorConfig(
                    id=values["id"],
                    driver=values["driver"],
                    interval=values["interval"],
                    options=MappingProxyType(options),
                )
            )
    return out


def _modules(problems: _Problems, doc: Mapping[str, Any], base_dir: Path) -> list[ModuleConfig]:
    out: list[ModuleConfig] = []
    seen: dict[str, str] = {}
    for n, table in enumerate(_items(problems, doc, "module")):
        path = f"module[{n}]"
        if not isinstance(table, dict):
            problems.add(path, f"expected a table, got {_typename(table)}")
            continue
        head = _check_table(problems, path, table, MODULE, base_dir, report_unknown=False)
        fields = dict(MODULE)
        cls = None
        if isinstance(head.get("kind"), str):
            cls = _plugin(
                problems,
                f"{path}.kind",
                "module",
                head["kind"],
                plugins.modules,
                plugins.module_class,
            )
        if cls is not None:
            fields.update({k: f for k, f in cls.CONFIG.items() if k not in MODULE})
            values = _check_table(problems, path, table, fields, base_dir, skip=MODULE)
            values.update(head)
        else:
            values = head
        if "id" in values:
            mid = values["id"]
            if mid in seen:
                problems.add(
                    f"{path}.id", f"duplicate module id {mid!r} (first used by {seen[mid]})"
                )
            else:
                line = problems.locator.line_of(f"{path}.id") if problems.locator else None
                seen[mid] = path if line is None else f"{path}, line {line}"
        if cls is not None and all(k in values for k in fields):
            options = {k: values[k] for k in fields if k not in MODULE}
            _plugin_rules(problems, path, cls, options)
            out.append(
                ModuleConfig(
                    id=values["id"],
                    kind=values["kind"],
                    options=MappingProxyType(options),
                )
            )
    return out


# --------------------------------------------------------------------------- loading


_TOML_POS = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_TOML_END = re.compile(r"\s*\(at end of document\)\s*$")


def _syntax_problem(problems: _Problems, exc: tomllib.TOMLDecodeError, text: str) -> None:
    message = str(exc)
    line: int | None = None
    m = _TOML_POS.search(message)
    if m:
        line = int(m[1])
        message = f"{message[: m.start()]} (column {m[2]})"
    elif _TOML_END.search(message):
        line = text.count("\n") + (0 if text.endswith("\n") else 1)
        message = _TOML_END.sub(" (at end of file)", message)
    problems.add("", f"TOML syntax error: {message}", line=line)


def loads(text: str, source: str = "<string>", base_dir: Path | None = None) -> Config:
    """The checked configuration in `text`; relative paths are taken from `base_dir` (default:
    the current directory). Raises ConfigError listing every problem, ordered by line."""
    return _loads(text, source=source, base_dir=base_dir, file=None)


def load(path: Path) -> Config:
    """The checked configuration in the file `path`; relative paths in it are taken from the
    file's directory. Raises ConfigError listing every problem, ordered by line."""
    path = Path(path)
    source = str(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(
            [f"{source}: cannot read: {exc.strerror or exc}"], source=source
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            [f"{source}:{line}: not valid UTF-8 (byte {exc.start})"], source=source
        ) from None
    file = path.absolute()
    return _loads(text, source=source, base_dir=file.parent, file=file)


def _loads(text: str, *, source: str, base_dir: Path | None, file: Path | None) -> Config:
    base = (base_dir if base_dir is not None else Path.cwd()).absolute()
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        problems = _Problems(source, None)
        _syntax_problem(problems, exc, text)
        raise ConfigError(problems.sorted(), source=source) from None

    problems = _Problems(source, _Locator(text))
    for key in doc:
        if key not in _TOP:
            kind = "table" if isinstance(doc[key], dict) else "key"
            hint = _did_you_mean(key, _TOP) or f"; known tables: {', '.join(_TOP)}"
            problems.add(key, f"unknown top-level {kind}{hint}")

    sections: dict[str, dict[str, Any]] = {}
    given: dict[str, Mapping[str, Any]] = {}
    for name, fields in SECTIONS.items():
        table = doc.get(name, {})
        if not isinstance(table, dict):
            problems.add(name, f"expected a table [{name}], got {_typename(table)}")
            table = {}
        if name == "device" and "device" not in doc:
            problems.add("device", "required table [device] is missing (it must set name)")
            sections[name] = {}
            given[name] = {}
            continue
        given[name] = table
        sections[name] = _check_table(problems, name, table, fields, base)
    _check_uplink(problems, sections["uplink"], given["uplink"])
    sensors = _sensors(problems, doc, base)
    modules = _modules(problems, doc, base)

    if problems:
        raise ConfigError(problems.sorted(), source=source)
    return Config(
        device=DeviceConfig(**sections["device"]),
        spool=SpoolConfig(**sections["spool"]),
        uplink=UplinkConfig(**sections["uplink"]),
        clock=ClockConfig(**sections["clock"]),
        log=LogConfig(**sections["log"]),
        sensors=tuple(sensors),
        modules=tuple(modules),
        source=file,
    )


def sample_text() -> str:
    """The commented sample configuration shipped with the package (gateway/sample.toml)."""
    return resources.files("gateway").joinpath("sample.toml").read_text(encoding="utf-8")


# --------------------------------------------------------------------------- rendering


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_str(key)


def _toml_str(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _toml_str(value)
    if isinstance(value, Path):
        return _toml_str(str(value))
    if isinstance(value, _dt.date | _dt.time):
        return value.isoformat()
    if isinstance(value, Mapping):
        inner = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return f"{{ {inner} }}" if inner else "{}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {type(value).__name__} as TOML")


def _render_table(lines: list[str], values: Mapping[str, Any]) -> None:
    for key, value in values.items():
        if value is None:
            lines.append(f"# {key}: not set")
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")


def render(cfg: Config) -> str:
    """The resolved configuration as TOML: defaults filled in, durations in seconds, sizes in
    bytes, paths absolute. Loading it again gives the same configuration."""
    lines = [
        "# Resolved configuration" + (f" of {cfg.source}" if cfg.source else ""),
        "# durations in seconds, sizes in bytes, paths absolute, defaults filled in",
    ]
    for name in SECTIONS:
        values = dict(vars(getattr(cfg, name)))
        lines += ["", f"[{name}]"]
        if name == "uplink":
            host, port, tls = values.pop("host"), values.pop("port"), values.pop("tls")
            url = values.pop("url")
            lines.append(f"url = {_toml_value(url)}")
            lines.append(
                f"# -> host {_toml_value(host)}, port {port}, {'TLS' if tls else 'plain text'}"
            )
        _render_table(lines, values)
    for sensor in cfg.sensors:
        lines += ["", "[[sensor]]"]
        _render_table(
            lines,
            {
                "id": sensor.id,
                "driver": sensor.driver,
                "interval": sensor.interval,
                **sensor.options,
            },
        )
    for module in cfg.modules:
        lines += ["", "[[module]]"]
        _render_table(lines, {"id": module.id, "kind": module.kind, **module.options})
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- reference


_TYPE_NAMES = {
    "str": "string",
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "path": "path",
    "duration": "duration",
    "size": "size",
    "str-list": "array of strings",
    "float-list": "array of numbers",
    "table": "table",
    "device": "bus number or name",
}


def _default_text(field: Field, key: str, fields: Mapping[str, Field]) -> str:
    if fields is SENSOR and key == "interval":
        return "the driver's `default_interval`"
    if field.required:
        return "required"
    if field.default is None:
        return "not set"
    if isinstance(field.default, str):
        return f"`{_toml_str(field.default)}`"
    return f"`{_toml_value(field.default)}`"


def _allowed_text(field: Field) -> str:
    if field.choices is not None:
        return ", ".join(f"`{_toml_value(c)}`" for c in field.choices)
    low = None if field.min is None else _show(field, field.min)
    high = None if field.max is None else _show(field, field.max)
    if low is not None and high is not None:
        return f"{low} .. {high}"
    if low is not None:
        return f"≥ {low}"
    if high is not None:
        return f"≤ {high}"
    return ""


def _table_md(title: str, fields: Mapping[str, Field]) -> list[str]:
    lines = [f"### {title}", ""]
    if not fields:
        return [*lines, "No options.", ""]
    lines += ["| Key | Type | Default | Allowed | Meaning |", "|---|---|---|---|---|"]
    for key, field in fields.items():
        cells = (
            f"`{key}`",
            _TYPE_NAMES[field.kind],
            _default_text(field, key, fields),
            _allowed_text(field),
            field.help,
        )
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return [*lines, ""]


def schema_reference() -> str:
    """Markdown tables of every key: the gateway's sections, then each installed plug-in's
    options (the generated part of docs/configuration.md)."""
    lines: list[str] = []
    for name, fields in SECTIONS.items():
        lines += _table_md(f"`[{name}]`", fields)
    lines += _table_md("`[[sensor]]`", SENSOR)
    lines += _table_md("`[[module]]`", MODULE)
    for what, names, load_class in (
        ("driver", plugins.drivers, plugins.driver_class),
        ("module", plugins.modules, plugins.module_class),
    ):
        for name in names():
            try:
                config = load_class(name).CONFIG
            except Exception as exc:
                lines += [f"### {what} `{name}`", "", f"(failed to load: {exc})", ""]
                continue
            lines += _table_md(f"{what} `{name}`", config)
    return "\n".join(lines)
