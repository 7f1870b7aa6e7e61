"""The gateway's configuration: one TOML file, checked strictly, every problem reported at once.

This module is the public face: the resolved `Config` and its sections, `load` and `loads`, and
re-exports of the rest, which is split by what it holds:

- `sections`: the gateway's own sections as `Field` dicts, and the rules spanning fields;
- `check`: one checker for those and for plug-ins' options alike: unknown keys (with a
  "did you mean"), wrong types, bad units, out-of-range values;
- `locate`: tomllib gives no positions, so a small locator maps key paths such as
  `sensor[1].interval` to line numbers; every problem reads `{source}:{line}: {keypath}: {message}`;
- `render`: the resolved configuration as TOML, and the Markdown reference of every key.

A `[[sensor]]`'s `placement` is passed on to every module that declares a `placements` table
option (`gateway.core.fields.PLACEMENTS`): the loader fills it in, sensor id -> placement, so a
module learns which sensors share the same air without a path of its own.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

from gateway.config.check import (
    Problems,
    check_table,
    did_you_mean,
    find_plugin,
    plugin_rules,
    typename,
)
from gateway.config.locate import Locator
from gateway.config.sections import (
    CLOCK,
    DEVICE,
    LOG,
    MODULE,
    SECTIONS,
    SENSOR,
    SPOOL,
    UPLINK,
    check_uplink,
)
from gateway.core import plugins
from gateway.core.errors import ConfigError
from gateway.core.fields import PLACEMENTS, Field, placement_key
from gateway.core.manifest import Manifest

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
    "ModelsConfig",
    "ModuleConfig",
    "MonitorConfig",
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
    """[device]: the gateway's name and its key."""

    name: str
    key_file: Path


@dataclass(frozen=True, kw_only=True)
class SpoolConfig:
    """[spool]: where readings wait, how large it may grow, how often it commits."""

    path: Path
    max_size: int
    commit_interval: float


@dataclass(frozen=True, kw_only=True)
class UplinkConfig:
    """[uplink]: the MQTT broker (its URL taken apart), credentials and batching."""

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
    """[clock]: whether wall time is trusted (detected, or set by hand)."""

    mode: str


@dataclass(frozen=True, kw_only=True)
class LogConfig:
    """[log]: the log level."""

    level: str


@dataclass(frozen=True, kw_only=True)
class ModelsConfig:
    """[models]: where model bundles live and whose signatures they need."""

    dir: Path | None
    trusted_model_signers: tuple[str, ...]
    fleet: str | None = None


@dataclass(frozen=True, kw_only=True)
class MonitorConfig:
    """[monitor]: state and health messages, Home Assistant discovery."""

    state_interval: float
    health_interval: float
    homeassistant: bool
    discovery_prefix: str
    attestors: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class SensorConfig:
    """One [[sensor]]: its driver, read interval, the driver's options, its placement."""

    id: str
    driver: str
    interval: float
    options: Mapping[str, Any]
    placement: str | None = None  # None: where the other sensors without one are


@dataclass(frozen=True, kw_only=True)
class ModuleConfig:
    """One [[module]]: its kind, the module's options and its time budget."""

    id: str
    kind: str
    options: Mapping[str, Any]
    budget: float = 0.02


@dataclass(frozen=True, kw_only=True)
class Config:
    """The whole checked configuration, as `load` and `loads` return it."""

    device: DeviceConfig
    spool: SpoolConfig
    uplink: UplinkConfig
    clock: ClockConfig
    log: LogConfig
    models: ModelsConfig
    monitor: MonitorConfig
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
            "models": _plain(vars(self.models)),
            "monitor": _plain(vars(self.monitor)),
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


# --------------------------------------------------------------------------- plug-in tables


def _items(problems: Problems, doc: Mapping[str, Any], name: str) -> list[Any]:
    value = doc.get(name, [])
    if not isinstance(value, list):
        problems.add(name, f"expected an array of tables [[{name}]], got {typename(value)}")
        return []
    return value


class _Table(NamedTuple):
    """One complete `[[sensor]]` or `[[module]]` table, checked."""

    path: str  # its key path, `module[2]`, for problems found later
    manifest: Manifest  # of the plug-in it names
    values: dict[str, Any]  # every key, the plug-in's options included
    options: dict[str, Any]  # the plug-in's options only


def _plugin_tables(
    problems: Problems,
    doc: Mapping[str, Any],
    base_dir: Path,
    *,
    array: str,
    head_fields: Mapping[str, Field],
    plugin_key: str,
    what: str,
) -> list[_Table]:
    """Check each `[[array]]` table: its own keys (`head_fields`), then the options of the
    plug-in it names (`plugin_key`), with duplicate ids reported. Returns every table that is
    complete."""
    names, manifest = (
        (plugins.drivers, plugins.driver) if what == "driver" else (plugins.modules, plugins.module)
    )
    out: list[_Table] = []
    seen: dict[str, str] = {}
    for n, table in enumerate(_items(problems, doc, array)):
        path = f"{array}[{n}]"
        if not isinstance(table, dict):
            problems.add(path, f"expected a table, got {typename(table)}")
            continue
        head = check_table(problems, path, table, head_fields, base_dir, report_unknown=False)
        fields = dict(head_fields)
        found = None
        if isinstance(head.get(plugin_key), str):
            found = find_plugin(
                problems, f"{path}.{plugin_key}", what, head[plugin_key], names, manifest
            )
        if found is not None:
            fields.update({k: f for k, f in found.config.items() if k not in head_fields})
            values = check_table(problems, path, table, fields, base_dir, skip=head_fields)
            values.update(head)
            if "interval" in head_fields and "interval" not in table:
                values["interval"] = float(getattr(found.factory, "default_interval", 60.0))
        else:
            values = head
        if "id" in values:
            ident = values["id"]
            if ident in seen:
                first = seen[ident]
                # its line only now: looking one up scans the text, which a valid file never needs
                line = problems.locator.line_of(f"{first}.id") if problems.locator else None
                problems.add(
                    f"{path}.id",
                    f"duplicate {array} id {ident!r} "
                    f"(first used by {first if line is None else f'{first}, line {line}'})",
                )
            else:
                seen[ident] = path
        if found is not None and all(k in values for k in fields):
            options = {k: values[k] for k in fields if k not in head_fields}
            plugin_rules(problems, path, found.factory, options)
            out.append(_Table(path, found, values, options))
    return out


def _sensors(problems: Problems, doc: Mapping[str, Any], base_dir: Path) -> list[SensorConfig]:
    if "sensor" not in doc or (isinstance(doc["sensor"], list) and not doc["sensor"]):
        problems.add("sensor", "no sensors: at least one [[sensor]] table is required")
    tables = _plugin_tables(
        problems,
        doc,
        base_dir,
        array="sensor",
        head_fields=SENSOR,
        plugin_key="driver",
        what="driver",
    )
    return [
        SensorConfig(
            id=t.values["id"],
            driver=t.values["driver"],
            interval=t.values["interval"],
            options=MappingProxyType(t.options),
            placement=t.values["placement"],
        )
        for t in tables
    ]


def _modules(
    problems: Problems, doc: Mapping[str, Any], base_dir: Path, sensors: list[SensorConfig]
) -> list[ModuleConfig]:
    tables = _plugin_tables(
        problems,
        doc,
        base_dir,
        array="module",
        head_fields=MODULE,
        plugin_key="kind",
        what="module",
    )
    out = []
    for t in tables:
        options = t.options
        field = t.manifest.config.get(PLACEMENTS)
        if isinstance(field, Field) and field.kind == "table":
            options = {**options, PLACEMENTS: _placements(problems, t, doc, sensors)}
        v = t.values
        out.append(
            ModuleConfig(
                id=v["id"], kind=v["kind"], options=MappingProxyType(options), budget=v["budget"]
            )
        )
    return out


def _placements(
    problems: Problems, table: _Table, doc: Mapping[str, Any], sensors: list[SensorConfig]
) -> dict[str, str]:
    """The `placements` a module gets: each `[[sensor]]`'s `placement`, and what the module's
    own table says, which must name sensors and agree with them (written out by `config
    check`, a resolved file lists them in both places)."""
    merged = {s.id: s.placement for s in sensors if s.placement is not None}
    given = table.options.get(PLACEMENTS) or {}
    ids = {t.get("id") for t in _items(Problems("", None), doc, "sensor") if isinstance(t, dict)}
    for sensor, placement in given.items():
        path = f"{table.path}.{PLACEMENTS}"
        if sensor not in ids:
            known = ", ".join(sorted(str(i) for i in ids if isinstance(i, str)))
            problems.add(path, f"{sensor}: no [[sensor]] has this id (sensors: {known})")
        elif sensor in merged and placement_key(merged[sensor]) != placement_key(placement):
            problems.add(
                path,
                f"{sensor}: {placement!r} here, but its [[sensor]] table says placement = "
                f"{merged[sensor]!r}; set it once, in the [[sensor]] table",
            )
        else:
            merged[sensor] = placement
    return merged


# --------------------------------------------------------------------------- loading


_ARRAYS = ("sensor", "module")
_TOP = (*SECTIONS, *_ARRAYS)

# tomllib's position suffixes, as patterns: compiled (and cached by `re`) only for a file it refused
_TOML_POS = r"\s*\(at line (\d+), column (\d+)\)\s*$"
_TOML_END = r"\s*\(at end of document\)\s*$"


def _syntax_problem(problems: Problems, exc: tomllib.TOMLDecodeError, text: str) -> None:
    message = str(exc)
    line: int | None = None
    m = re.search(_TOML_POS, message)
    if m:
        line = int(m[1])
        message = f"{message[: m.start()]} (column {m[2]})"
    elif re.search(_TOML_END, message):
        line = text.count("\n") + (0 if text.endswith("\n") else 1)
        message = re.sub(_TOML_END, " (at end of file)", message)
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
        problems = Problems(source, None)
        _syntax_problem(problems, exc, text)
        raise ConfigError(problems.sorted(), source=source) from None

    problems = Problems(source, Locator(text))
    for key in doc:
        if key not in _TOP:
            kind = "table" if isinstance(doc[key], dict) else "key"
            hint = did_you_mean(key, _TOP) or f"; known tables: {', '.join(_TOP)}"
            problems.add(key, f"unknown top-level {kind}{hint}")

    sections: dict[str, dict[str, Any]] = {}
    given: dict[str, Mapping[str, Any]] = {}
    for name, fields in SECTIONS.items():
        table = doc.get(name, {})
        if not isinstance(table, dict):
            problems.add(name, f"expected a table [{name}], got {typename(table)}")
            table = {}
        if name == "device" and "device" not in doc:
            problems.add("device", "required table [device] is missing (it must set name)")
            sections[name] = {}
            given[name] = {}
            continue
        given[name] = table
        sections[name] = check_table(problems, name, table, fields, base)
    check_uplink(problems, sections["uplink"], given["uplink"])
    sensors = _sensors(problems, doc, base)
    modules = _modules(problems, doc, base, sensors)

    if problems:
        raise ConfigError(problems.sorted(), source=source)
    return Config(
        device=DeviceConfig(**sections["device"]),
        spool=SpoolConfig(**sections["spool"]),
        uplink=UplinkConfig(**sections["uplink"]),
        clock=ClockConfig(**sections["clock"]),
        log=LogConfig(**sections["log"]),
        models=ModelsConfig(**sections["models"]),
        monitor=MonitorConfig(**sections["monitor"]),
        sensors=tuple(sensors),
        modules=tuple(modules),
        source=file,
    )


def render(config: Config) -> str:
    """The resolved configuration as TOML: defaults filled in, durations in seconds, sizes in
    bytes, paths absolute. Loading it again gives the same configuration."""
    from gateway.config import (
        render as config_render,  # here: only `config check` prints one, not `status`
    )

    return config_render.render(config)


def schema_reference() -> str:  # public, not in __all__
    """Markdown tables of every key: the gateway's sections, then each installed plug-in's
    options (the generated part of docs/configuration.md)."""
    from gateway.config import render as config_render  # here: only the docs need it

    return config_render.schema_reference()


def read_password(section: str, password_file: Path | None, password_env: str | None) -> str | None:
    """The MQTT password a section names (`password_file` or `password_env`); ConfigError
    naming the section's key when it cannot be had."""
    if password_file is not None:
        try:
            return password_file.read_text().rstrip("\r\n")
        except OSError as e:
            raise ConfigError(
                [f"{section}.password_file: cannot read {password_file}: {e}"]
            ) from None
    if password_env is not None:
        value = os.environ.get(password_env)
        if value is None:
            raise ConfigError([f"{section}.password_env: variable {password_env} is not set"])
        return value
    return None


def sample_text() -> str:
    """The commented sample configuration: the gateway's own sections and the samples its
    plug-ins ship (gateway/config/render.py builds it; gateway/sample.toml is a copy of it)."""
    from gateway.config import render as config_render  # here: only `config sample` needs it

    return config_render.sample()
