"""Unsigned JSON from the broker (a gateway's `state` and `health`), field by field.

Anyone with publish rights can send these, so nothing of them reaches the page unchecked: each
field the page shows is taken when it has its type and a sane range (finite numbers, times
between 1970 and 2100, integers exact in JavaScript, texts cut to a length, lists cut to a
count) and left out otherwise. What comes out is small and well-typed whatever went in; the
page still renders a field that is missing.
"""

from __future__ import annotations

import math
from typing import Any

from gateway.wire.score import CHAIN_FACTOR

TEXT = 64  # longest name, unit, flag or sensor id kept
LONG_TEXT = 256  # longest error message kept
MAX_FLAGS = 16
MAX_MODULES = 32
MAX_COUNTERS = 32
#: Integers beyond this lose digits in JavaScript.
MAX_INT = 2**53 - 1
#: Times: seconds since 1970, before 2100 (a Date in the page takes any of them).
LATEST_TIME = 4_102_444_800.0


def number(x: Any, lo: float = -math.inf, hi: float = math.inf) -> float | None:
    """A finite int or float (not a bool) within [lo, hi], as a float; None otherwise."""
    if not isinstance(x, int | float) or isinstance(x, bool):
        return None
    try:
        f = float(x)
    except OverflowError:  # an integer of hundreds of digits
        return None
    return f if math.isfinite(f) and lo <= f <= hi else None


def moment(x: Any) -> float | None:
    """A time in seconds since 1970 that any calendar can show."""
    return number(x, 0.0, LATEST_TIME)


def integer(x: Any, lo: int = -MAX_INT, hi: int = MAX_INT) -> int | None:
    return x if type(x) is int and lo <= x <= hi else None


def count(x: Any) -> int | None:
    return integer(x, 0)


def text(x: Any, limit: int = TEXT) -> str | None:
    return x[:limit] if isinstance(x, str) else None


def flag(x: Any) -> bool | None:
    return x if isinstance(x, bool) else None


def flags(x: Any) -> list[str]:
    if not isinstance(x, list):
        return []
    return [f[:TEXT] for f in x[:MAX_FLAGS] if isinstance(f, str) and f]


def _counters(x: Any) -> dict[str, int]:
    if not isinstance(x, dict):
        return {}
    out: dict[str, int] = {}
    for k, v in list(x.items())[:MAX_COUNTERS]:
        n = count(v)
        if isinstance(k, str) and n is not None:
            out[k[:TEXT]] = n
    return out


def _modules(x: Any) -> list[dict[str, str]]:
    out: list[dict[str, str]] = []
    if not isinstance(x, list):
        return out
    for m in x[:MAX_MODULES]:
        if isinstance(m, dict):
            kept = {k: text(m.get(k)) for k in ("id", "name", "version", "sha256")}
            out.append({k: v for k, v in kept.items() if v is not None})
    return out


def attestation_copy(x: Any) -> dict[str, Any] | None:
    """The gateway's own copy of its latest attestation (unsigned: the page says so)."""
    if not isinstance(x, dict):
        return None
    status = x.get("status")
    out = {
        "score": number(x.get("score"), 0.0, 1.0),
        "status": status if isinstance(status, str) and status in CHAIN_FACTOR else None,
        "expected": count(x.get("expected")),
        "verified": count(x.get("verified")),
        "flagged": count(x.get("flagged")),
        "epoch_start": moment(x.get("epoch_start")),
        "epoch_end": moment(x.get("epoch_end")),
        "attestor": text(x.get("attestor"), 128),
    }
    return out


_COUNTS = (
    "readings", "flagged", "batches_sealed", "batches_acked", "readings_acked",
    "readings_dropped", "queue_depth", "connects", "uplink_errors", "reloads", "last_seq",
    "writes_refused",
)  # fmt: skip
_DURATIONS = ("uptime_s", "oldest_unsent_age_s")
_BOOLS = ("connected", "disk_full")
_TEXTS = ("name", "version", "protocol")


def health(doc: dict[str, Any]) -> dict[str, Any]:
    """The fields of a health message (gateway/core/health.py) the page shows, each present
    only when it is well-typed; `attestation` is None or a checked copy."""
    out: dict[str, Any] = {}
    for key in _COUNTS:
        out[key] = count(doc.get(key))
    for key in _DURATIONS:
        out[key] = number(doc.get(key), 0.0, 1e10)
    for key in _BOOLS:
        out[key] = flag(doc.get(key))
    for key in _TEXTS:
        out[key] = text(doc.get(key))
    out["anomaly_rate"] = number(doc.get("anomaly_rate"), 0.0, 1.0)
    out["t"] = moment(doc.get("t"))
    out["last_error"] = text(doc.get("last_error"), LONG_TEXT)
    clock = doc.get("clock")
    if isinstance(clock, dict):
        out["clock"] = {"synced": flag(clock.get("synced")), "source": text(clock.get("source"))}
    out["modules"] = _modules(doc.get("modules"))
    out["ignored_messages"] = _counters(doc.get("ignored_messages"))
    out["attestation"] = attestation_copy(doc.get("attestation"))
    return {k: v for k, v in out.items() if v is not None}
