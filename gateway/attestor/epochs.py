"""Epoch scoring from the store, and the signed attestation (spec section 6). The formula
itself is gateway/wire/score.py, which the dashboard and any verifier share.

An epoch is the half-open interval [start, start + length), aligned to multiples of its length
in Unix time; a batch belongs to the epoch that contains its `sealed` time. Per device and
epoch, from the store:

- expected: from the device's birth messages. Each birth applies from its start until the next
  birth's start; for every birth segment overlapping the epoch, each sensor's quantities x the
  segment's seconds inside the epoch / the sensor's interval, rounded down, summed. A birth
  starts at its claimed `started`, but no later than the attestor received it (a device cannot
  push its start towards the epoch end). A birth received once the epoch had ended cannot lower
  that epoch's expectation (the larger figure, with or without such births, counts). No birth:
  nothing is expected and the score is 0 (a device must announce what it measures).
- verified: readings with a value in the batches accepted into the chain (valid, gap, reordered).
- flagged: of those, readings with at least one flag (`"af"`).
- synced: of those, readings in batches sealed with a synchronised clock.
- status: "equivocation" when the device signed two batches for one seq sealed in the epoch,
  else "replay" for replayed or mislinked batches, else "gap" when a seq is missing between the
  last accepted batch before the epoch and the last one in it, else "ok".

    score = availability x quality x clock x chain
    availability = min(1, verified / expected)          (0 when nothing is expected)
    quality      = 1 - flagged / verified               (1 when nothing was verified)
    clock        = synced / verified                    (spec section 9 step 6: readings without
                                                         a synced clock count for availability,
                                                         not for time-bound rewards)
    chain        = ok 1, gap 1, replay 0.5, equivocation 0

A gap costs through availability already (the missing batches' readings are missing), so it is
not charged twice. The score is rounded to 6 decimals so that every attestor computes the same
number from the same store.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass

from gateway.attestor.db import Database, Tx
from gateway.wire import cose, dcbor, merkle
from gateway.wire.identity import Identity
from gateway.wire.score import score


@dataclass(frozen=True)
class EpochScore:
    did: str
    start: int
    end: int
    expected: int
    verified: int
    synced: int
    flagged: int
    status: str
    score: float
    batch_ids: tuple[bytes, ...]

    @property
    def root(self) -> bytes:
        return merkle.root(list(self.batch_ids))


def epoch_of(t: float, length: int) -> int:
    return math.floor(t / length) * length


def attested_synced(
    db: Database, did: str, start: int, end: int, verified: int, root: bytes
) -> int | None:
    """The `synced` figure an attestation was scored with, from the store; None when the store
    can no longer tell.

    Attestations keep expected, verified and flagged but not synced, and batches of the epoch
    that arrived after it was scored are in the store too. The scored batches are those stored
    before the attestation: the longest such run, in the order they were received, whose
    readings add up to the attested `verified` and whose ids give the attested Merkle root.
    """
    rows = db.execute(
        "SELECT seq, batch_id, readings, synced FROM batches "
        "WHERE did = ? AND sealed >= ? AND sealed < ? ORDER BY received, seq",
        (did, start, end),
    ).fetchall()
    total = sum(int(r[2]) for r in rows)
    for k in range(len(rows), -1, -1):
        if k < len(rows):
            total -= int(rows[k][2])
        if total != verified:
            continue
        taken = sorted(rows[:k], key=lambda r: int(r[0]))
        if merkle.root([bytes(r[1]) for r in taken]) == root:
            return sum(int(r[3]) for r in taken)
    return None


def expected_readings(births: list[tuple[float, float, str]], start: int, end: int) -> int:
    """`births`: (started, received, sensors) of the device, any order; sensors is the JSON of
    the birth's sensor list or of its summary (`chains.sensor_summary`), alike in effect.

    Rebooting (a new birth) does not restart the count: a device publishing a fresh birth near
    the end of every epoch is still expected to have measured all along, by its earlier birth.
    """
    on_time = [b for b in births if b[1] < end]
    if len(on_time) == len(births):
        return _segments(births, start, end)
    # Births received after the epoch ended may add to it (an attestor that was away got the
    # retained birth late), never take from it (a device rewriting a scored past).
    return max(_segments(on_time, start, end), _segments(births, start, end))


def _segments(births: list[tuple[float, float, str]], start: int, end: int) -> int:
    # A birth starts when it says, but no later than it was received.
    ordered = sorted((min(started, received), sensors) for started, received, sensors in births)
    total = 0
    for i, (since, sensors) in enumerate(ordered):
        until = ordered[i + 1][0] if i + 1 < len(ordered) else float(end)
        since, until = max(since, float(start)), min(until, float(end))
        if until <= since:
            continue
        for interval, quantities in _rates(sensors):
            total += quantities * int((until - since) // interval)
    return max(0, total)


@functools.lru_cache(maxsize=256)
def _rates(sensors: str) -> tuple[tuple[float, int], ...]:
    """(interval, quantities) from a sensor list's JSON or its summary's; cached, as a
    device's births mostly repeat one list."""
    out: list[tuple[float, int]] = []
    for s in json.loads(sensors):
        if isinstance(s, dict):
            out.append((float(s["interval"]), len(s["quantities"])))
        else:
            out.append((float(s[0]), int(s[1])))
    return tuple(out)


_EFFECTIVE = "CASE WHEN started < received THEN started ELSE received END"
#: The births `expected_readings` needs for an epoch, not every birth of the device (a device
#: rebooting without end has thousands): those starting inside the epoch, and the last to start
#: by its beginning, of all births and of those received before its end (`_segments` gives a
#: birth the time until the next one starts, so any earlier birth adds nothing). Ties included.
_BIRTHS = (
    "SELECT started, received, COALESCE(summary, sensors) "
    f"FROM births WHERE did = ? AND {_EFFECTIVE} < ? AND ("
    f"{_EFFECTIVE} > ? "
    f"OR {_EFFECTIVE} >= (SELECT max({_EFFECTIVE}) FROM births WHERE did = ? AND received < ? "
    f"AND {_EFFECTIVE} <= ?) "
    f"OR {_EFFECTIVE} >= (SELECT max({_EFFECTIVE}) FROM births WHERE did = ? "
    f"AND {_EFFECTIVE} <= ?))"
)


def compute(tx: Tx, did: str, start: int, end: int) -> EpochScore:
    rows = tx.all(
        "SELECT seq, batch_id, readings, synced, flagged FROM batches "
        "WHERE did = ? AND sealed >= ? AND sealed < ? ORDER BY seq",
        (did, start, end),
    )
    verified = sum(int(r[2]) for r in rows)
    synced = sum(int(r[3]) for r in rows)
    flagged = sum(int(r[4]) for r in rows)
    kinds = {
        str(k)
        for (k,) in tx.all(
            "SELECT DISTINCT kind FROM evidence WHERE did = ? AND sealed >= ? AND sealed < ?",
            (did, start, end),
        )
    }
    if "equivocation" in kinds:
        status = "equivocation"
    elif kinds:
        status = "replay"
    elif rows and _missing(tx, did, start, [int(r[0]) for r in rows]):
        status = "gap"
    else:
        status = "ok"
    found = tx.all(_BIRTHS, (did, end, start, did, end, start, did, start))
    births = [(float(s), float(r), str(j)) for s, r, j in found]
    expected = expected_readings(births, start, end)
    return EpochScore(
        did=did,
        start=start,
        end=end,
        expected=expected,
        verified=verified,
        synced=synced,
        flagged=flagged,
        status=status,
        score=score(expected, verified, synced, flagged, status),
        batch_ids=tuple(bytes(r[1]) for r in rows),
    )


def _missing(tx: Tx, did: str, start: int, seqs: list[int]) -> bool:
    row = tx.one("SELECT max(seq) FROM batches WHERE did = ? AND sealed < ?", (did, start))
    first = seqs[0] if row is None or row[0] is None else min(int(row[0]) + 1, seqs[0])
    return len(seqs) != seqs[-1] - first + 1


def attestation_payload(attestor_did: str, e: EpochScore, revision: int = 0) -> bytes:
    """Spec section 6; key 11, the revision, only from the first revision on (a first
    attestation has none)."""
    fields: dict[int, object] = {
        1: attestor_did,
        2: e.did,
        3: e.start,
        4: e.end,
        5: e.expected,
        6: e.verified,
        7: e.flagged,
        8: e.status,
        9: float(e.score),
        10: e.root,
    }
    if revision:
        fields[11] = revision
    return dcbor.dumps(fields)


def attest(db: Database, identity: Identity, did: str, start: int, length: int) -> bytes | None:
    """Score and sign the epoch once: the first worker to get here stores the attestation,
    the others find it there (None). The caller publishes it."""
    end = start + length
    with db.transaction() as tx:
        # The device row lock orders this with the device's batches and other workers.
        tx.one("SELECT last_seq FROM devices WHERE did = ? FOR UPDATE", (did,))
        if tx.one("SELECT 1 FROM attestations WHERE did = ? AND epoch_start = ?", (did, start)):
            return None
        e = compute(tx, did, start, end)
        message = cose.sign1(identity, cose.TYP_ATTESTATION, attestation_payload(identity.did, e))
        tx.execute(
            "INSERT INTO attestations(did, epoch_start, epoch_end, expected, verified, flagged, "
            "status, score, root, message, published) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)",
            (did, start, end, e.expected, e.verified, e.flagged, e.status, e.score, e.root,
             message),
        )  # fmt: skip
    return message


def revise(db: Database, identity: Identity, did: str, start: int) -> bytes | None:
    """Sign the next revision of an epoch's attestation, marked stale by a batch (or evidence)
    that arrived after it was signed: the newest revision supersedes the others, so a batch
    held back past `grace` still counts. Once per stale mark: the first worker to get here
    signs it, the others find it done (None), as for first attestations. None too when the
    batches that came changed nothing the attestation says."""
    with db.transaction() as tx:
        tx.one("SELECT last_seq FROM devices WHERE did = ? FOR UPDATE", (did,))
        row = tx.one(
            "SELECT epoch_end, revision, message, expected, verified, flagged, status, score, "
            "root FROM attestations WHERE did = ? AND epoch_start = ? AND stale = 1",
            (did, start),
        )
        if row is None:
            return None
        end, revision, old = int(row[0]), int(row[1]), bytes(row[2])
        e = compute(tx, did, start, end)
        same = (e.expected, e.verified, e.flagged, e.status, e.score, e.root) == (
            int(row[3]), int(row[4]), int(row[5]), str(row[6]), float(row[7]), bytes(row[8])
        )  # fmt: skip
        if same:
            tx.execute(
                "UPDATE attestations SET stale = 0 WHERE did = ? AND epoch_start = ?", (did, start)
            )
            return None
        revision += 1
        payload = attestation_payload(identity.did, e, revision)
        message = cose.sign1(identity, cose.TYP_ATTESTATION, payload)
        tx.execute(
            "INSERT INTO superseded(did, epoch_start, revision, message) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (did, epoch_start, revision) DO NOTHING",
            (did, start, revision - 1, old),
        )
        tx.execute(
            "UPDATE attestations SET expected = ?, verified = ?, flagged = ?, status = ?, "
            "score = ?, root = ?, message = ?, published = 0, revision = ?, stale = 0 "
            "WHERE did = ? AND epoch_start = ?",
            (e.expected, e.verified, e.flagged, e.status, e.score, e.root, message, revision,
             did, start),
        )  # fmt: skip
    return message
