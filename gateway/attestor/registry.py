"""The device registry and the store queries the CLI and the epoch loop share."""

from __future__ import annotations

import time
from typing import Any

from gateway.attestor.db import Database
from gateway.core.errors import ConfigError
from gateway.wire import verify


def normalise_did(entry: str) -> str:
    """A did:key or a bare device id (`z6Mk…`) as a did:key; ConfigError when it is neither."""
    try:
        return verify.normalise_did(entry)
    except ValueError:
        raise ConfigError([f"{entry!r} is not an Ed25519 did:key or device id"]) from None


def register(db: Database, entry: str, name: str, *, now: float | None = None) -> tuple[str, bool]:
    """Add a device (or rename it); returns (did, whether it is new)."""
    did = normalise_did(entry)
    now = time.time() if now is None else now
    with db.transaction() as tx:
        known = tx.one("SELECT name FROM devices WHERE did = ? FOR UPDATE", (did,))
        if known is None:
            tx.execute(
                "INSERT INTO devices(did, name, registered) VALUES (?, ?, ?)", (did, name, now)
            )
        else:
            tx.execute("UPDATE devices SET name = ? WHERE did = ?", (name, did))
    return did, known is None


def is_registered(db: Database, did: str) -> bool:
    return db.execute("SELECT 1 FROM devices WHERE did = ?", (did,)).fetchone() is not None


def registered_dids(db: Database) -> frozenset[str]:
    """Every registered did (the worker's cache, read by the cheap checks in paho's thread)."""
    return frozenset(str(d) for (d,) in db.execute("SELECT did FROM devices").fetchall())


def devices(db: Database) -> list[dict[str, Any]]:
    rows = db.execute(
        "SELECT d.did, d.name, d.registered, d.last_seq, "
        "(SELECT count(*) FROM batches b WHERE b.did = d.did), "
        "(SELECT coalesce(sum(readings), 0) FROM batches b WHERE b.did = d.did), "
        "(SELECT count(*) FROM evidence e WHERE e.did = d.did) "
        "FROM devices d ORDER BY d.name, d.did"
    ).fetchall()
    return [
        {
            "did": r[0],
            "name": r[1],
            "registered": float(r[2]),
            "last_seq": r[3],
            "batches": int(r[4]),
            "readings": int(r[5]),
            "evidence": int(r[6]),
        }
        for r in rows
    ]


def counts(db: Database) -> dict[str, dict[str, int]]:
    """Findings by device ("" for unknown or unproven senders) and kind."""
    out: dict[str, dict[str, int]] = {}
    for did, kind, n in db.execute("SELECT did, kind, n FROM counts").fetchall():
        out.setdefault(str(did), {})[str(kind)] = int(n)
    return out


def attestable(db: Database) -> list[tuple[str, float, float, int | None]]:
    """(did, time of its first accepted batch, registration time, start of its last attested
    epoch or None) of every registered device that sent one: one row per device, from the
    device table (`first_sealed` is kept by `chains.process_batch`)."""
    rows = db.execute(
        "SELECT d.did, d.first_sealed, d.registered, "
        "(SELECT max(a.epoch_start) FROM attestations a WHERE a.did = d.did) "
        "FROM devices d WHERE d.first_sealed IS NOT NULL"
    ).fetchall()
    return [(str(d), float(t), float(r), None if a is None else int(a)) for d, t, r, a in rows]


def unpublished(db: Database) -> list[tuple[str, int, int, bytes]]:
    """(did, epoch start, revision, message) of each attestation whose newest revision is not
    published yet."""
    rows = db.execute(
        "SELECT did, epoch_start, revision, message FROM attestations WHERE published = 0 "
        "ORDER BY epoch_start, did"
    ).fetchall()
    return [(str(d), int(s), int(r), bytes(m)) for d, s, r, m in rows]


def mark_published(db: Database, did: str, start: int, revision: int = 0) -> None:
    """Only that revision: a newer one signed meanwhile is still to be published."""
    db.execute(
        "UPDATE attestations SET published = 1 WHERE did = ? AND epoch_start = ? AND revision = ?",
        (did, start, revision),
    )


def stale(db: Database) -> list[tuple[str, int]]:
    """(did, epoch start) of the attestations that batches arrived for after they were signed."""
    rows = db.execute(
        "SELECT did, epoch_start FROM attestations WHERE stale = 1 ORDER BY epoch_start, did"
    ).fetchall()
    return [(str(d), int(s)) for d, s in rows]


def attestations(
    db: Database, *, epoch: int | None = None, did: str | None = None
) -> list[dict[str, Any]]:
    where: list[str] = []
    params: list[Any] = []
    if epoch is not None:
        where.append("a.epoch_start = ?")
        params.append(epoch)
    if did is not None:
        where.append("a.did = ?")
        params.append(did)
    sql = (
        "SELECT a.did, d.name, a.epoch_start, a.epoch_end, a.expected, a.verified, a.flagged, "
        "a.status, a.score, a.root, a.published, a.revision FROM attestations a "
        "JOIN devices d ON d.did = a.did"
        + (" WHERE " + " AND ".join(where) if where else "")
        + " ORDER BY a.epoch_start, d.name, a.did"
    )
    keys = ("did", "name", "epoch_start", "epoch_end", "expected", "verified", "flagged",
            "status", "score", "root", "published", "revision")  # fmt: skip
    out = []
    for row in db.execute(sql, params).fetchall():
        item = dict(zip(keys, row, strict=True))
        item["root"] = bytes(item["root"]).hex()
        item["published"] = bool(item["published"])
        item["score"] = float(item["score"])
        item["revision"] = int(item["revision"])
        out.append(item)
    return out


def batch_message(db: Database, did: str, seq: int) -> bytes | None:
    """The signed batch a device's chain holds at `seq`, exactly as it arrived."""
    row = db.execute("SELECT message FROM batches WHERE did = ? AND seq = ?", (did, seq)).fetchone()
    return None if row is None else bytes(row[0])
