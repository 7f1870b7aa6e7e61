"""What owners watch: the retained `state` mirror and the `health` message (spec section 8).

Both are plain JSON for dashboards (Home Assistant, the project's own page); neither is signed
and neither is evidence of anything — the signed batches are. Fields are documented in
docs/monitoring.md.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from gateway.core.health import Health
from gateway.core.reading import Reading
from gateway.wire import cose


class StateMirror:
    """The latest reading of every sensor quantity, as the chain judged it: it takes every
    judged reading, beside the commit buffer."""

    def __init__(self, device_id: str, name: str) -> None:
        self.device_id = device_id
        self.name = name
        self.sensors: dict[str, dict[str, dict[str, Any]]] = {}
        self.updated = 0.0
        self.changed = False

    def accept(self, readings: Iterable[Reading]) -> None:
        for r in readings:
            value = r.value if r.value is not None and math.isfinite(r.value) else None
            self.sensors.setdefault(r.sensor, {})[r.quantity] = {
                "v": value,
                "u": r.unit,
                "t": round(r.t, 3),
                "as": round(r.score, 4),
                "af": list(r.flags),
            }
            self.updated = max(self.updated, r.t)
            self.changed = True

    def to_json(self) -> bytes:
        self.changed = False
        return json.dumps(
            {
                "device": self.device_id,
                "name": self.name,
                "updated": round(self.updated, 3),
                "sensors": self.sensors,
            },
            sort_keys=True,
            allow_nan=False,
        ).encode()


def rss_bytes() -> int | None:
    """The process's resident memory now (Linux), for health."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


class HealthReport:
    """Builds the health message; remembers the previous one to report rates per interval."""

    def __init__(self, *, device_id: str, name: str, version: str) -> None:
        self.device_id = device_id
        self.name = name
        self.version = version
        self._last: tuple[int, int] | None = None  # (readings, flagged) at the previous report

    def build(
        self,
        health: Health,
        *,
        modules: Iterable[tuple[str, str, str, bytes]],
        now: float | None = None,
    ) -> dict[str, Any]:
        now = time.time() if now is None else now
        snap = health.snapshot(now)
        before = self._last or (0, 0)
        readings, flagged = health.readings - before[0], health.flagged - before[1]
        self._last = (health.readings, health.flagged)
        return {
            "device": self.device_id,
            "name": self.name,
            "version": self.version,
            "t": round(now, 3),
            **snap,
            "anomaly_rate": round(min(1.0, flagged / readings), 4) if readings > 0 else 0.0,
            "modules": [
                {"id": i, "name": n, "version": v, "sha256": d.hex()} for i, n, v, d in modules
            ],
            "memory_rss_bytes": rss_bytes(),
        }

    @staticmethod
    def to_json(doc: Mapping[str, Any]) -> bytes:
        return json.dumps(doc, sort_keys=True, allow_nan=False, default=str).encode()


def read_attestation(message: bytes, did: str, attestors: Collection[str]) -> dict[str, Any] | None:
    """The score of an attestation about this device (spec section 6), with the epoch start and
    revision that order it (`supersedes`), or None when the message
    is not a valid attestation about it signed by one of `attestors` (did:key strings: the
    owner's `[monitor] attestors`; none, none is taken). Judged from its size first, and its
    payload is decoded strictly, only once the signer is known to be one of them."""
    # Here, not at the top: the verifier's module is not needed until an attestation comes.
    from gateway.wire import limits, strict
    from gateway.wire.verify import is_finite_number

    if not attestors or len(message) > limits.CAPS["attestation"]:
        return None
    try:
        s = cose.verify1(message)
    except Exception:  # anything on the topic that does not verify is ignored
        return None
    if s.typ != cose.TYP_ATTESTATION or _did_of(s.public_key) not in attestors:
        return None
    try:
        m = strict.loads(s.payload)
    except strict.DecodeError:
        return None
    if not isinstance(m, dict) or m.get(2) != did or m.get(1) != _did_of(s.public_key):
        return None
    # Anyone can sign an attestation: take only fields of the documented types and ranges, so
    # nothing odd (NaN, huge integers, maps) reaches the health message.
    score: Any = m.get(9)
    status = m.get(8)
    # Revision (key 11, spec v1.1): an attestor's later word on the same epoch; absent, 0.
    ints = [m.get(k) for k in (3, 4, 5, 6, 7)] + [m.get(11, 0)]
    if not is_finite_number(score) or not 0 <= score <= 1:
        return None
    if status not in ("ok", "gap", "equivocation", "replay"):
        return None
    if not all(type(v) is int and 0 <= v < 2**63 for v in ints):
        return None
    start, end, expected, verified, flagged, revision = ints
    return {
        "score": float(score),
        "status": status,
        "epoch_start": start,
        "revision": revision,
        "epoch_end": end,
        "expected": expected,
        "verified": verified,
        "flagged": flagged,
        "attestor": m[1],
    }


def supersedes(new: Mapping[str, Any], held: Mapping[str, Any] | None) -> bool:
    """Whether attestation `new` (as `read_attestation` returns it) is later than `held`, the
    one shown: a later epoch, or a higher revision of the same epoch. Anyone may republish an
    attestor's older attestations; an older or equal one changes nothing."""
    if held is None:
        return True
    return (new["epoch_start"], new["revision"]) > (
        held.get("epoch_start", -1),
        held.get("revision", 0),
    )


def _did_of(key: bytes) -> str:
    from gateway.wire.identity import did_of

    return did_of(key)
