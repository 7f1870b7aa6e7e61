"""Births a registered device can make the attestor keep: bounded per epoch of arrival.

A device may publish births without end (each with a fresh boot id). The store keeps the first
BIRTHS_WHOLE of each epoch whole, up to BIRTHS_KEPT as the figures the expectation needs, and
counts the rest; the expectation of any epoch is what the births kept give, computed alike
from whole rows and summarised ones; an honest device's score does not move.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.attestor import registry
from gateway.attestor.chains import BIRTHS_KEPT, BIRTHS_WHOLE
from gateway.attestor.config import loads
from gateway.attestor.db import Database
from gateway.attestor.epochs import compute, expected_readings
from gateway.attestor.service import Worker
from gateway.wire.identity import Identity
from tests import make_batches as mb
from tests.pg import database

PREFIX = "depin/v1"
FLOODER = mb.identity(mb.SEED_A)
ATTESTOR = mb.identity(mb.SEED_B)
HONEST = mb.identity(mb.SEED_C)
EPOCH = 3600
START = mb.SEALED - mb.SEALED % EPOCH
HONEST_SENSORS = [{"id": "climate", "driver": "bme280", "quantities": ["t", "h"], "interval": 60}]


def _cfg(store: str, tmp_path: Path) -> Any:
    return loads(
        f'[attestor]\nstore = "{store}"\nepoch = "1 h"\ngrace = "0 s"\ntick = "0.3 s"\n'
        '[broker]\nurl = "mqtt://127.0.0.1:1"\n',
        base_dir=tmp_path,
    )


def _topic(ident: Identity) -> str:
    return f"{PREFIX}/{ident.device_id}/birth"


def _big_sensors(i: int) -> list[dict[str, Any]]:
    """Some 35 KB of sensors (64 of them, each with 7 or 8 quantities named in 60 characters);
    the intervals vary with `i`, so births differ in what they make expected."""
    return [
        {
            "id": f"sensor-{k:02d}".ljust(60, "x"),
            "driver": "bme280".ljust(60, "y"),
            "quantities": [f"q{q}".ljust(60, "z") for q in range(7 + (k + i) % 2)],
            "interval": 30 + (k + i) % 7 * 15,
        }
        for k in range(64)
    ]


def _boot(i: int) -> bytes:
    return i.to_bytes(16, "big")


def _flood(w: Worker, n: int, *, epochs: int) -> list[tuple[float, float, str]]:
    """`n` births of the flooder, received over `epochs` epochs from START on, claiming starts
    inside and before those epochs; returns (started, received, sensors JSON) of each, in the
    order sent."""
    sent: list[tuple[float, float, str]] = []
    variants = [_big_sensors(v) for v in range(5)]
    for i in range(n):
        received = START + (i * epochs // n) * EPOCH + (i % 50) * 60.0
        started = received - (i % 3) * EPOCH - (i % 11) * 13.0  # some backdated epochs
        sensors = variants[i % len(variants)]
        message = mb.birth_with_sensors(FLOODER, sensors, boot=_boot(i), started=started)
        assert len(message) > 30_000
        assert w.handle(_topic(FLOODER), message, now=received).kind == "birth"
        sent.append((started, received, json.dumps(sensors, sort_keys=True)))
    return sent


def _kept(sent: list[tuple[float, float, str]]) -> list[tuple[float, float, str]]:
    """The births the bound keeps: the first BIRTHS_KEPT received in each epoch."""
    per: dict[int, int] = {}
    out = []
    for b in sent:
        e = int(b[1]) // EPOCH
        per[e] = per.get(e, 0) + 1
        if per[e] <= BIRTHS_KEPT:
            out.append(b)
    return out


def _honest_scores(w: Worker) -> dict[int, float]:
    """The honest device: one birth, a batch a minute through the first two epochs."""
    birth = mb.birth_with_sensors(HONEST, HONEST_SENSORS, boot=_boot(1), started=START - 1)
    assert w.handle(_topic(HONEST), birth, now=START - 1).kind == "birth"
    chain = mb.Chain(ident=HONEST)
    for b in chain.take(120):
        assert w.handle("t", b.message, now=mb.SEALED + 60 * b.seq + 1).kind == "valid"
    w.tick(now=START + 2 * EPOCH + 1)
    return {
        int(a["epoch_start"]): float(a["score"])
        for a in registry.attestations(w.db, did=HONEST.did)
    }


def _expected(db: Database, did: str, start: int) -> int:
    with db.transaction() as tx:
        return compute(tx, did, start, start + EPOCH).expected


def test_two_thousand_births_keep_the_store_bounded(tmp_path: Path) -> None:
    quiet = Worker(_cfg(str(tmp_path / "quiet.db"), tmp_path), ATTESTOR)
    registry.register(quiet.db, HONEST.did, "balcony", now=START - EPOCH)
    before = _honest_scores(quiet)
    quiet.db.close()
    assert before and set(before.values()) == {1.0}

    path = tmp_path / "a.db"
    w = Worker(_cfg(str(path), tmp_path), ATTESTOR)
    registry.register(w.db, HONEST.did, "balcony", now=START - EPOCH)
    registry.register(w.db, FLOODER.did, "flood", now=START - EPOCH)
    epochs = 3
    sent = _flood(w, 2000, epochs=epochs)
    kept = _kept(sent)
    rows, whole, stored = w.db.execute(
        "SELECT count(*), sum(CASE WHEN length(message) > 0 THEN 1 ELSE 0 END), "
        "sum(length(message) + length(sensors) + length(summary)) FROM births WHERE did = ?",
        (FLOODER.did,),
    ).fetchone()
    assert rows == len(kept) == epochs * BIRTHS_KEPT
    assert whole == epochs * BIRTHS_WHOLE
    sent_bytes = 2000 * 30_000
    assert stored < sent_bytes / 50  # what the 2,000 births' messages alone would take
    counts = dict(
        w.db.execute("SELECT kind, n FROM counts WHERE did = ?", (FLOODER.did,)).fetchall()
    )
    assert counts["birth-excess"] == 2000 - len(kept)
    assert counts["birth-summarised"] == epochs * (BIRTHS_KEPT - BIRTHS_WHOLE)

    assert _honest_scores(w) == before
    w.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    w.db.close()
    assert path.stat().st_size < 8 * 2**20  # unbounded, the births alone were some 70 MB


def test_the_expectation_is_that_of_the_births_kept(tmp_path: Path) -> None:
    """Summarised rows give the expectation their whole births gave: for every epoch, what
    the store computes is `expected_readings` over the kept births' full sensor lists (the
    first BIRTHS_KEPT of each epoch of arrival), and it stays so as later births arrive, as
    when an older epoch is revised."""
    w = Worker(_cfg(str(tmp_path / "a.db"), tmp_path), ATTESTOR)
    registry.register(w.db, FLOODER.did, "flood", now=START - EPOCH)
    sent = _flood(w, 400, epochs=2)
    first = _kept(sent)
    scored = range(START - 3 * EPOCH, START + 3 * EPOCH, EPOCH)
    figures = {s: _expected(w.db, FLOODER.did, s) for s in scored}
    assert figures == {s: expected_readings(first, s, s + EPOCH) for s in scored}
    assert figures[START] > 0
    # Only the first BIRTHS_KEPT of an epoch count: all 200 would make another figure.
    assert figures[START] != expected_readings(sent[:200], START, START + EPOCH)

    # A later epoch's births arrive; an older epoch computed again is what it was, unless a
    # kept late birth added to it (never less).
    later = START + 5 * EPOCH
    for i in range(400, 400 + BIRTHS_KEPT + 10):
        message = mb.birth_with_sensors(
            FLOODER, _big_sensors(i), boot=_boot(i), started=START + EPOCH + i
        )
        w.handle(_topic(FLOODER), message, now=later)
        if i < 400 + BIRTHS_KEPT:
            first.append((START + EPOCH + i, later, json.dumps(_big_sensors(i), sort_keys=True)))
    again = {s: _expected(w.db, FLOODER.did, s) for s in scored}
    assert again == {s: expected_readings(first, s, s + EPOCH) for s in scored}
    assert all(again[s] >= figures[s] for s in scored)
    w.db.close()


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_a_store_without_birth_summaries_is_upgraded(tmp_path: Path, dialect: str) -> None:
    with contextlib.ExitStack() as stack:
        url = str(tmp_path / "a.db") if dialect == "sqlite" else stack.enter_context(database())
        w = Worker(_cfg(url, tmp_path), ATTESTOR)
        registry.register(w.db, FLOODER.did, "flood", now=START - EPOCH)
        old = mb.birth_with_sensors(FLOODER, _big_sensors(0), boot=_boot(0), started=START)
        assert w.handle(_topic(FLOODER), old, now=START).kind == "birth"
        figure = _expected(w.db, FLOODER.did, START)
        assert figure > 0
        # As a store made before the column: dropped, then opened again.
        w.db.execute("ALTER TABLE births DROP COLUMN summary")
        w.db.close()
        w = Worker(_cfg(url, tmp_path), ATTESTOR)
        try:
            assert _expected(w.db, FLOODER.did, START) == figure  # from its sensor list
            new = mb.birth_with_sensors(
                FLOODER, HONEST_SENSORS, boot=_boot(1), started=START + 1800
            )
            assert w.handle(_topic(FLOODER), new, now=START + 1800).kind == "birth"
            births = [
                (float(START), float(START), json.dumps(_big_sensors(0), sort_keys=True)),
                (START + 1800.0, START + 1800.0, json.dumps(HONEST_SENSORS)),
            ]
            assert _expected(w.db, FLOODER.did, START) == expected_readings(
                births, START, START + EPOCH
            )
        finally:
            w.db.close()
