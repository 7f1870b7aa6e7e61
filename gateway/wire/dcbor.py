"""Deterministic CBOR (spec section 7) on top of cbor2's canonical encoder.

cbor2's canonical mode already sorts map keys length-first and picks the shortest exact float;
what it does not do is the spec's "a value with no fractional part is an integer" rule and the
ban on NaN and infinities, so numbers pass through `number()` first.
"""

from __future__ import annotations

import math
from typing import Any

import cbor2

from gateway.wire import strict

_INT_LIMIT = 2**64


def number(x: float | int) -> float | int:
    """Return `x` in the form the spec encodes it: integral floats become ints, -0.0 becomes 0."""
    if isinstance(x, bool):
        raise TypeError("booleans are not numbers here")
    if isinstance(x, int):
        return x
    if not math.isfinite(x):
        raise ValueError(f"{x!r} cannot be encoded: NaN and infinities are not allowed")
    if x.is_integer() and -_INT_LIMIT < x < _INT_LIMIT:
        return int(x)
    return x


def normalise(obj: Any) -> Any:
    """Recursively apply `number()` to every float in lists and maps."""
    if isinstance(obj, float):
        return number(obj)
    if isinstance(obj, dict):
        return {k: normalise(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [normalise(v) for v in obj]
    return obj


def dumps(obj: Any) -> bytes:
    """Encode `obj` deterministically (numbers normalised, keys sorted, shortest floats)."""
    return cbor2.dumps(normalise(obj), canonical=True)


def dumps_normalised(obj: Any) -> bytes:
    """Encode an object whose numbers the caller already passed through `number()` (hot path)."""
    return cbor2.dumps(obj, canonical=True)


def is_deterministic(data: bytes) -> bool:
    """True when `data` is one tag-free item in the encoding of spec section 7, judged from
    its bytes (gateway/wire/strict.py): nothing is decoded or re-encoded to tell."""
    return strict.is_deterministic(data)
