"""The configuration written out: the resolved config as TOML (what `config check` prints), the
Markdown reference of every key (the generated part of docs/configuration.md), and the sample
(what `config sample` prints), built from the samples the plug-ins ship.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gateway.config.check import show
from gateway.config.locate import BARE_KEY
from gateway.config.sections import MODULE, SECTIONS, SENSOR
from gateway.core import plugins
from gateway.core.errors import GatewayError
from gateway.core.fields import Field
from gateway.core.manifest import Kind

if TYPE_CHECKING:  # a type only: gateway.config.settings imports this module
    from gateway.config.settings import Config


def _toml_key(key: str) -> str:
    return key if BARE_KEY.fullmatch(key) else _toml_str(key)


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
                "placement": sensor.placement,
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
    low = None if field.min is None else show(field, field.min)
    high = None if field.max is None else show(field, field.max)
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
    for what, names, manifest in (
        ("driver", plugins.drivers, plugins.driver),
        ("module", plugins.modules, plugins.module),
    ):
        for name in names():
            try:
                config = manifest(name).config
            except Exception as exc:
                lines += [f"### {what} `{name}`", "", f"(failed to load: {exc})", ""]
                continue
            lines += _table_md(f"{what} `{name}`", config)
    return "\n".join(lines)


# --------------------------------------------------------------------------- the sample

#: The plug-ins whose samples make up `config sample`, in this order, after the gateway's own
#: sections (sections.sample.toml beside this file): a configuration that runs anywhere, with a
#: simulated sensor and the rule modules (no hardware, no extras).
SAMPLE_PLUGINS: tuple[tuple[Kind, str], ...] = (
    ("driver", "simulated"),
    ("module", "ranges"),
    ("module", "spikes"),
    ("module", "stuck"),
    ("module", "replay"),
    ("module", "dropout"),
    ("module", "drift"),
    ("module", "plausibility"),
)


def sample() -> str:
    """The sample configuration: the gateway's own sections, then the sample of each plug-in of
    `SAMPLE_PLUGINS` as its manifest names it, a blank line between them."""
    parts = [Path(__file__).with_name("sections.sample.toml").read_text(encoding="utf-8")]
    for kind, name in SAMPLE_PLUGINS:
        try:
            manifest = plugins.driver(name) if kind == "driver" else plugins.module(name)
            parts.append(manifest.sample_text())
        except (LookupError, OSError) as e:  # no metadata, or another package took the name
            raise GatewayError(
                f"the sample of the {kind} {name!r} is not available ({e}): is depin-gateway "
                "installed (pip install -e . in a checkout)?"
            ) from None
    return "\n".join(parts)
