"""Step 5 of spec section 9 against the store: one transaction per batch.

The device's row is locked first, so two workers holding batches of one device take turns, and
each sees the chain as the other left it: the chain is read by a second statement, which in
PostgreSQL's read committed mode sees whatever committed before it started, the lock holder's
batch included (one statement joining both would see the batches as of before the wait). The
decision itself is `gateway.wire.verify.decide`, the same rule the stand-alone verifier applies.
Everything is idempotent: a batch stored once is a `duplicate` every later time, whichever
worker gets it.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
import time
from dataclasses import dataclass
from typing import Any

from gateway.attestor.db import Database, Tx
from gateway.wire import cose, payloads, strict
from gateway.wire.verify import LINKED, Examined, Finding, decide, is_finite_number

EVIDENCE_KINDS = ("equivocation", "replay", "prev-mismatch")
#: Evidence kept whole (both signed batches) per device; beyond it, one row without the message
#: per kind and epoch (what an epoch's status needs), and the count of every finding.
EVIDENCE_KEPT = 16


@dataclass(frozen=True)
class _Link:
    batch_id: bytes
    prev: bytes


def count(tx: Tx, did: str, kind: str, n: int = 1) -> None:
    tx.execute(
        "INSERT INTO counts(did, kind, n) VALUES (?, ?, ?) "
        "ON CONFLICT (did, kind) DO UPDATE SET n = counts.n + excluded.n",
        (did, kind, n),
    )


def tallies(batch: payloads.Batch) -> tuple[int, int, int]:
    """(readings with a value, of them read with a synced clock, of them flagged)."""
    synced = batch.clock.get("synced") is True
    records = batch.records
    # map/compress rather than a loop: this runs over every record of every batch
    has_value = list(map(dict.__contains__, records, itertools.repeat(payloads.V)))
    readings = sum(has_value)
    flagged = sum(map(bool, map(_get_flags, itertools.compress(records, has_value))))
    return readings, readings if synced else 0, flagged


_get_flags = operator.methodcaller("get", payloads.FLAGS)


def process_batch(
    db: Database, x: Examined, *, now: float | None = None, epoch: int = 3600
) -> Finding:
    """Record one checked batch in its device's chain; the finding says what it was. `epoch`:
    the scoring epoch's length, for the evidence kept beyond EVIDENCE_KEPT."""
    now = time.time() if now is None else now
    b, did = x.batch, x.did
    with db.transaction() as tx:
        # Both statements go out together (one round trip in PostgreSQL's pipeline); the
        # server runs the second after the first has the lock.
        lock = tx.query(
            "SELECT last_seq, first_sealed FROM devices WHERE did = ? FOR UPDATE", (did,)
        )
        near = tx.query(
            "SELECT seq, batch_id, prev FROM batches WHERE did = ? AND seq IN (?, ?, ?)",
            (did, b.seq - 1, b.seq, b.seq + 1),
        )
        row = lock.fetchone()
        if row is None:  # registered checks happen before; this one is authoritative
            count(tx, "", "unknown-device")
            return x.finding("unknown-device", "not registered")
        last, first = row[0], row[1]
        links = {int(s): _Link(bytes(i), bytes(p)) for s, i, p in near.fetchall()}
        kind, detail = decide(
            b.seq, b.prev, x.batch_id, last=last, link=lambda s: links.get(s), stated=b.dropped
        )
        count(tx, did, kind)
        if kind in LINKED:
            readings, synced, flagged = tallies(b)
            tx.execute(
                "INSERT INTO batches(did, seq, batch_id, prev, sealed, kind, readings, synced, "
                "flagged, received, message) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (did, b.seq, x.batch_id, b.prev, float(b.sealed), kind, readings, synced,
                 flagged, now, x.message),
            )  # fmt: skip
            if kind == "gap" and last is not None:
                tx.execute(
                    "INSERT INTO gaps(did, first_seq, last_seq, received) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (did, first_seq) DO NOTHING",
                    (did, last + 1, b.seq - 1, now),
                )
            # The device row keeps what the epoch loop needs (its first batch's time), so the
            # loop reads one row per device rather than grouping all batches every tick.
            sealed = float(b.sealed)
            if last is None or b.seq > last or first is None or sealed < first:
                tx.execute(
                    "UPDATE devices SET last_seq = ?, first_sealed = ? WHERE did = ?",
                    (b.seq if last is None else max(last, b.seq),
                     sealed if first is None else min(float(first), sealed), did),
                )  # fmt: skip
            _revise(tx, did, float(b.sealed))
        elif kind in EVIDENCE_KINDS and (
            (kept := _evidence_rows(tx, did) < EVIDENCE_KEPT)
            or _epoch_lacks(tx, did, kind, float(b.sealed), epoch)
        ):
            # Signed by the device, so attributable: kept whole, as evidence (the first few).
            tx.execute(
                "INSERT INTO evidence(did, seq, kind, batch_id, sealed, detail, received, message) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (did, seq, batch_id) DO NOTHING",
                (did, b.seq, kind, x.batch_id, float(b.sealed), detail, now,
                 x.message if kept else b""),
            )  # fmt: skip
            _revise(tx, did, float(b.sealed))
    return x.finding(kind, detail)


def _evidence_rows(tx: Tx, did: str) -> int:
    return int(tx.one("SELECT count(*) FROM evidence WHERE did = ?", (did,))[0])


def _epoch_lacks(tx: Tx, did: str, kind: str, sealed: float, epoch: int) -> bool:
    """Beyond the first EVIDENCE_KEPT rows of a device, a row goes into the evidence table only
    when none of that kind is there for the epoch yet (an epoch's status needs one, and a
    device equivocating without end must not grow the store)."""
    start = math.floor(sealed / epoch) * epoch
    return (
        tx.one(
            "SELECT 1 FROM evidence WHERE did = ? AND kind = ? AND sealed >= ? AND sealed < ?",
            (did, kind, start, start + epoch),
        )
        is None
    )


def _revise(tx: Tx, did: str, sealed: float) -> None:
    """A batch or evidence for an epoch already attested: its attestation is signed again
    (`epochs.revise`), so a late batch still counts."""
    tx.execute(
        "UPDATE attestations SET stale = 1 "
        "WHERE did = ? AND epoch_start <= ? AND epoch_end > ? AND stale = 0",
        (did, sealed, sealed),
    )


#: Births kept whole (the signed message) per device and epoch of arrival: a device boots a few
#: times a day. Beyond, up to BIRTHS_KEPT, a birth keeps only what its expectation needs (boot
#: id, started, received and the sensor summary); beyond that it is counted, not kept, and
#: plays no part in the expectation. So a device sending births without end makes the store
#: keep at most BIRTHS_WHOLE messages and BIRTHS_KEPT rows per epoch.
BIRTHS_WHOLE = 4
BIRTHS_KEPT = 64


def process_birth(
    db: Database, message: bytes, *, now: float | None = None, epoch: int = 3600
) -> bool:
    """Keep a registered device's birth: its sensors and intervals set the readings expected.
    False when its sensor list is not what spec section 5 says (nothing is kept). `epoch`: the
    scoring epoch's length, the period BIRTHS_WHOLE and BIRTHS_KEPT apply to."""
    now = time.time() if now is None else now
    m = strict.loads(cose.verify1(message).payload)  # `examine` checked it; this unpacks it
    if not isinstance(m, dict):
        return False
    sensors = m.get(6)
    if (
        not isinstance(m.get(3), bytes)
        or not is_finite_number(m.get(4))
        or not _sensors_ok(sensors)
    ):
        return False
    did, boot = m[1], m[3]
    since = math.floor(now / epoch) * epoch
    with db.transaction() as tx:
        # The device row lock orders this with the device's other births on other workers.
        if tx.one("SELECT 1 FROM devices WHERE did = ? FOR UPDATE", (did,)) is None:
            return True  # registered when examined, removed since: nothing to keep
        if tx.one("SELECT 1 FROM births WHERE did = ? AND boot = ?", (did, boot)):
            return True  # the same boot again (a retained birth): kept already
        (n,) = tx.one(
            "SELECT count(*) FROM births WHERE did = ? AND received >= ? AND received < ?",
            (did, since, since + epoch),
        )
        if int(n) >= BIRTHS_KEPT:
            count(tx, did, "birth-excess")
            return True
        whole = int(n) < BIRTHS_WHOLE
        tx.execute(
            "INSERT INTO births(did, boot, started, sensors, received, message, summary) "
            "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (did, boot) DO NOTHING",
            (did, boot, float(m[4]), json.dumps(sensors, sort_keys=True) if whole else "",
             now, message if whole else b"", sensor_summary(sensors)),
        )  # fmt: skip
        if not whole:
            count(tx, did, "birth-summarised")
    return True


def sensor_summary(sensors: Any) -> str:
    """What a sensor list makes a device expected to deliver, as JSON: [[interval, quantities
    read at that interval], ...] by interval. The expectation of a segment is the same from
    either (each sensor's readings over a segment depend on its interval alone), and the
    summary holds one pair per distinct interval, not every sensor's ids and names."""
    per: dict[float, int] = {}
    for s in sensors:
        if s["quantities"]:
            interval = float(s["interval"])
            per[interval] = per.get(interval, 0) + len(s["quantities"])
    return json.dumps(sorted(per.items()))


#: the shortest sensor interval a birth may announce; anything below is not a sensor but an
#: attempt to make the expected readings (and the store's integers) absurd
MIN_INTERVAL = 0.001
_SENSOR_KEYS = frozenset({"id", "driver", "quantities", "interval"})


def _sensors_ok(sensors: object) -> bool:
    """Spec section 5 key 6: exactly [{"id", "driver", "quantities": [..], "interval": s}]."""
    return isinstance(sensors, list) and all(
        isinstance(s, dict)
        and set(s) == _SENSOR_KEYS
        and isinstance(s["id"], str)
        and isinstance(s["driver"], str)
        and isinstance(s["quantities"], list)
        and all(isinstance(q, str) for q in s["quantities"])
        and is_finite_number(s["interval"])
        and s["interval"] >= MIN_INTERVAL
        for s in sensors
    )
