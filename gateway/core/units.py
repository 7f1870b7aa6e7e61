"""Human units in configuration: durations ("5 min") to seconds, sizes ("256 MiB") to bytes.

A person editing a config file on a Pi should not have to count zeros, so every duration and
size accepts a number with a unit. Plain numbers keep working (seconds, bytes) so that a resolved
configuration, printed with units stripped, loads again unchanged.
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_HALF_EVEN, Decimal

__all__ = [
    "DURATION_UNITS",
    "SIZE_UNITS",
    "format_duration",
    "format_size",
    "parse_duration",
    "parse_size",
]

# unit spelling (lower case) -> seconds
_DURATION: dict[str, Decimal] = {}
for _names, _secs in (
    (("ms", "msec", "msecs", "millisecond", "milliseconds"), Decimal("0.001")),
    (("s", "sec", "secs", "second", "seconds"), Decimal(1)),
    (("m", "min", "mins", "minute", "minutes"), Decimal(60)),
    (("h", "hr", "hrs", "hour", "hours"), Decimal(3600)),
    (("d", "day", "days"), Decimal(86400)),
):
    for _n in _names:
        _DURATION[_n] = _secs

# unit spelling (lower case) -> bytes
_SIZE: dict[str, int] = {"b": 1, "byte": 1, "bytes": 1}
for _i, _prefix in enumerate(("k", "m", "g", "t"), start=1):
    _SIZE[_prefix + "b"] = 1000**_i
    _SIZE[_prefix + "ib"] = 1024**_i

DURATION_UNITS = "ms, s, min, h, d"
SIZE_UNITS = "B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)"

_DURATION_HINT = (
    f'use a number with one of {DURATION_UNITS} (e.g. "250 ms", "30 s", "5 min", "1.5 h", '
    '"2 d"), or a plain number of seconds'
)
_SIZE_HINT = (
    f'use a number with one of {SIZE_UNITS}, e.g. "512 B", "64 KiB", "256 MiB", '
    '"1 GB"; or a plain whole number of bytes'
)

_NUMBER_UNIT = re.compile(
    r"""\s*
    (?P<num>[+-]?(?:\d[\d_]*(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)
    \s*
    (?P<unit>[^\s\d.+-][^\s]*)?
    \s*""",
    re.VERBOSE,
)


def _split(text: str) -> tuple[Decimal, str] | None:
    m = _NUMBER_UNIT.fullmatch(text)
    if m is None:
        return None
    num = m["num"].replace("_", "")
    return Decimal(num), (m["unit"] or "")


def parse_duration(value: str | int | float) -> float:
    """Seconds from `"5 min"`, `"30 s"`, `"1.5 h"`, `"250 ms"`, `"2 d"` or a plain number.

    Raises ValueError naming the bad text and the accepted units.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"invalid duration {value!r}: {_DURATION_HINT}")
    if not isinstance(value, str):
        if not math.isfinite(value):
            raise ValueError(f"invalid duration {value!r}: must be a finite number")
        return float(value)
    parts = _split(value)
    if parts is None:
        raise ValueError(f'invalid duration "{value}": {_DURATION_HINT}')
    number, unit = parts
    scale = _DURATION.get(unit.lower()) if unit else Decimal(1)
    if scale is None:
        raise ValueError(f'invalid duration "{value}": unknown unit "{unit}"; {_DURATION_HINT}')
    seconds = float(number * scale)
    if not math.isfinite(seconds):
        raise ValueError(f'invalid duration "{value}": too large')
    return seconds


def parse_size(value: str | int | float) -> int:
    """Bytes from `"256 MiB"`, `"64 KiB"`, `"1 GB"`, `"1.5 GiB"`, `"512 B"` or a plain integer.

    A fractional result is rounded to the nearest byte. Raises ValueError naming the bad text
    and the accepted units.
    """
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ValueError(f"invalid size {value!r}: {_SIZE_HINT}")
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError(f"invalid size {value!r}: {_SIZE_HINT}")
        return int(value)
    parts = _split(value)
    if parts is None:
        raise ValueError(f'invalid size "{value}": {_SIZE_HINT}')
    number, unit = parts
    if not unit:
        if number != number.to_integral_value():
            raise ValueError(f'invalid size "{value}": {_SIZE_HINT}')
        return int(number)
    scale = _SIZE.get(unit.lower())
    if scale is None:
        raise ValueError(f'invalid size "{value}": unknown unit "{unit}"; {_SIZE_HINT}')
    return int((number * scale).to_integral_value(ROUND_HALF_EVEN))


def _num(x: float) -> str:
    return f"{x:g}" if abs(x) < 1e15 else repr(x)


def format_duration(seconds: float) -> str:
    """A short human form of `seconds` that `parse_duration` reads back to the same value."""
    if seconds == 0:
        return "0 s"
    for unit, scale in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds % scale == 0:
            return f"{_num(seconds / scale)} {unit}"
    if abs(seconds) < 1:
        ms = seconds * 1000
        if float(f"{ms:g}") / 1000 == seconds:
            return f"{_num(ms)} ms"
    text = f"{seconds:g}"
    return f"{text} s" if float(text) == seconds else f"{seconds!r} s"


def format_size(size: int) -> str:
    """A short human form of `size` bytes (binary units when exact, else plain bytes)."""
    if size == 0:
        return "0 B"
    for unit, scale in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size % scale == 0:
            return f"{size // scale} {unit}"
    return f"{size} B"
