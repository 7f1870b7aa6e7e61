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
    """One option: its kind (`KINDS`), help text, default (`REQUIRED`: none), bounds, allowed
    values and an extra check on the converted value."""

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


#: The option through which a detection module learns where each sensor is: a module declaring
#: a `table` field of this name gets it filled in by the config loader from the `placement` key
#: of every `[[sensor]]` (sensor id -> placement), so cross-sensor checks can tell which sensors
#: share the same air. Sensors without a placement are not listed: together they are one place.
PLACEMENTS = "placements"


def placement_key(placement: str | None) -> str:
    """What two placements are compared by: "Outdoor" and "outdoor" are one place, and so are
    all sensors without one (the empty key)."""
    return " ".join((placement or "").split()).casefold()


def placement_problem(value: str) -> str | None:
    """Why `value` is not a usable placement, or None. Free text (a room's name is a fine
    placement), but printable and without outer spaces: it is shown and compared, and would
    otherwise differ from what the file seems to say."""
    if not value or len(value) > 64:
        why = "is empty" if not value else "is longer than 64 characters"
    elif not value.isprintable():
        why = "contains a control character (a newline, a tab ...)"
    elif value != value.strip():
        why = "starts or ends with a space"
    else:
        return None
    return (
        f"placement {value!r} {why}: use a short name of where the sensor is, like "
        '"indoor", "outdoor" or "kitchen"'
    )
