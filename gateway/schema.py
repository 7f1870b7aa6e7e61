"""Typed option declarations shared by the config loader, drivers and detection modules.

A plug-in (driver or module) declares its options as a dict of `Field`s; the config loader
checks a table against them strictly, exactly as it checks the gateway's own sections.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

REQUIRED: Any = object()

# Field kinds the loader understands:
#   "str", "int", "float", "bool", "path", "duration" (seconds, from "5 min" or a number),
#   "size" (bytes, from "256 MiB" or an integer), "device" (a bus number or a name, kept as
#   text: `bus = 1` and `bus = "/dev/i2c-3"` alike), "str-list", "float-list", "table" (free-form
#   dict of the plug-in's own, checked by its `check` callable).
KINDS = frozenset(
    {
        "str",
        "int",
        "float",
        "bool",
        "path",
        "duration",
        "size",
        "str-list",
        "float-list",
        "table",
        "device",
    }
)


@dataclass(frozen=True)
class Field:
    kind: str
    help: str
    default: Any = REQUIRED
    min: float | None = None
    max: float | None = None
    choices: tuple[Any, ...] | None = None
    # Extra check on the converted value; returns an error text or None.
    check: Callable[[Any], str | None] | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown field kind {self.kind!r}")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED
