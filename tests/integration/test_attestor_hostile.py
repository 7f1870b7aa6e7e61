"""The attestor against what anyone on the broker can send: a message that cannot be judged is
one counted finding and never stops the worker; late batches revise the epoch's attestation;
a device equivocating without end cannot grow the store; the store's password stays out of
every line. SQLite and PostgreSQL alike, a real mosquitto where the broker matters."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest

from gateway.attestor import chains, registry, service
from gateway.attestor.config import loads
from gateway.attestor.db import Database
from gateway.attestor.lanes import Item, Lanes
from gateway.attestor.service import Worker
from gateway.wire import cose, identity
from tests import hostile
from tests import make_batches as mb
from tests.attestorproc import running, wait
from tests.brokers import Mosquitto
from tests.integration.test_attestor_store import birth
from tests.publisher import publisher

EPOCH = 3600
START = mb.SEALED - mb.SEALED % EPOCH
DEV = mb.identity(mb.SEED_A)
ATTESTOR = mb.identity(mb.SEED_B)
PREFIX = "depin/v1"
TOPIC = f"{PREFIX}/{DEV.device_id}/batch"


def _cfg(store: str, tmp_path: Path, port: int = 1, extra: str = "") -> Any:
    return loads(
        f'[attestor]\nstore = "{store}"\nepoch = "1 h"\ngrace = "0 s"\ntick = "0.2 s"\n{extra}'
        f'[broker]\nurl = "mqtt://127.0.0.1:{port}"\n',
        base_dir=tmp_path,
    )


@pytest.fixture
def w(store: str, tmp_path: Path) -> Iterator[Worker]:
    worker = Worker(_cfg(store, tmp_path), ATTESTOR)
    registry.register(worker.db, DEV.did, "balcony", now=START)
    try:
        yield worker
    finally:
        worker.db.close()


def _hostile_batches() -> dict[str, bytes]:
    """Every hostile payload class, signed by a throwaway key as a batch (so the signature
    passes and the payload is what gets judged), and one signed by the registered device."""
    out = {
        "sharing-bomb": hostile.signed(hostile.sharing_bomb()),
        "self-reference": hostile.signed(hostile.self_reference()),
        "deep-nesting": hostile.signed(hostile.deep_nesting(10_000)),
        "registered-self-reference": hostile.signed(hostile.self_reference(), ident=DEV),
        "registered-bomb-records": hostile.signed(
            hostile.batch_map(DEV, hostile.sharing_bomb()), ident=DEV
        ),
    }
    for name, item in {**hostile.unknown_tags(), **hostile.huge_lengths()}.items():
        out[name] = hostile.signed(item)
        out[f"registered-records-{name}"] = hostile.signed(hostile.batch_map(DEV, item), ident=DEV)
    return out


@pytest.mark.parametrize("name", sorted(_hostile_batches()))
def test_a_hostile_batch_is_one_finding_and_changes_nothing(w: Worker, name: str) -> None:
    chain = mb.Chain(ident=DEV)
    assert w.handle(TOPIC, chain.next().message).kind == "valid"
    message = _hostile_batches()[name]
    f = w.handle(TOPIC, message)
    assert f.forged, f
    assert registry.devices(w.db)[0]["batches"] == 1
    assert w.handle(TOPIC, chain.next().message).kind == "valid"


def test_a_message_the_verifier_raises_on_is_malformed_once(
    w: Worker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever judging raises (here the verification step itself), the message gets one
    "malformed" finding, counted once; it is not retried and the next batch is stored."""

    def boom(*_: Any, **__: Any) -> Any:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(service, "examine", boom)
    f = w.handle(TOPIC, hostile.signed(hostile.self_reference()))
    assert (f.kind, f.forged) == ("malformed", True)
    assert "RecursionError" in f.detail
    assert registry.counts(w.db)[""]["malformed"] == 1
    monkeypatch.undo()
    assert w.handle(TOPIC, mb.Chain(ident=DEV).next().message).kind == "valid"


def test_only_a_store_outage_is_retried(w: Worker, monkeypatch: pytest.MonkeyPatch) -> None:
    def away(*_: Any, **__: Any) -> Any:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(chains, "process_batch", away)
    with pytest.raises(service.StoreAway):
        w.handle(TOPIC, mb.Chain(ident=DEV).next().message)


# --- over a real broker -------------------------------------------------------------------------


@contextlib.contextmanager
def _worker(store: str, tmp_path: Path, port: int, extra: str = "") -> Iterator[Worker]:
    """A worker on `store` running in a thread; its store closed after."""
    w = Worker(_cfg(store, tmp_path, port, extra), ATTESTOR)
    try:
        with running(w):
            yield w
    finally:
        w.db.close()


def test_a_hostile_message_does_not_stall_the_worker_across_a_restart(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The 220-byte message that once stalled the worker for good: acked once judged, so a
    restarted worker is not handed it again, and every honest batch after it is stored."""
    store = str(tmp_path / "a.db")
    db = Database(store)
    registry.register(db, DEV.did, "balcony")
    db.close()
    chain = mb.Chain(ident=DEV)
    with publisher(mosquitto.port) as pub:
        for restart in range(2):
            with _worker(store, tmp_path, mosquitto.port) as w:
                bad = hostile.signed(hostile.self_reference(), ident=DEV)
                pub.publish(TOPIC, bad, qos=1).wait_for_publish(5)
                for b in [chain.next() for _ in range(3)]:
                    pub.publish(TOPIC, b.message, qos=1).wait_for_publish(5)
                n = 3 * (restart + 1)

                def stored(w: Worker = w, n: int = n) -> bool:
                    return bool(registry.devices(w.db)[0]["batches"] == n)

                wait(stored, 10, "batches")
    db = Database(store)
    try:
        assert registry.counts(db)[DEV.did]["malformed"] == 2  # once each, never again
    finally:
        db.close()


def test_oversized_and_junk_are_acked_and_counted_and_honest_batches_pass(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    store = str(tmp_path / "a.db")
    db = Database(store)
    registry.register(db, DEV.did, "balcony")
    db.close()
    # A small inbox: 8 MiB, so the junk lane (half) overflows while the worker judges junk.
    small = 'inbox_bytes = "8 MiB"\n'
    with _worker(store, tmp_path, mosquitto.port, small) as w, publisher(mosquitto.port) as pub:
        big = hostile.oversized(4 * 1024 * 1024 + 1)
        pub.publish(TOPIC, big, qos=1).wait_for_publish(5)
        pub.publish(f"{PREFIX}/{DEV.device_id}/birth", hostile.oversized(65 * 1024), qos=1)
        junk = hostile.oversized(1024 * 1024)
        for _ in range(40):
            pub.publish(f"{PREFIX}/x/batch", junk, qos=1)
        chain = mb.Chain(ident=DEV)
        for b in chain.take(5):
            pub.publish(TOPIC, b.message, qos=1)
        wait(lambda: registry.devices(w.db)[0]["batches"] == 5, 15, "honest batches")
        wait(lambda: not w.refused and len(w.lanes) == 0, 15, "the junk judged or dropped")
        time.sleep(0.5)  # the next tick writes the counts
        counts = registry.counts(w.db)[""]
        assert counts["oversized"] == 2
        assert counts.get("dropped", 0) + counts.get("malformed", 0) == 40
        assert w.lanes.held == 0


def _batches(db: Database, did: str) -> int:
    return int(db.execute("SELECT count(*) FROM batches WHERE did = ?", (did,)).fetchone()[0])


def test_replays_of_a_device_batch_are_counted_not_judged_and_another_device_passes(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """An outsider copies device A's stored batch and publishes it again and again, on A's topic
    and on B's. The copies on A's topic are A's duplicates (counted, nothing stored); those on
    B's topic are nobody's, never in B's counts; every batch B sends meanwhile is stored. A
    restarted worker (nothing remembered) still judges a copy a duplicate, from the store."""
    store = str(tmp_path / "a.db")
    dev_b = mb.identity(mb.SEED_C)
    topic_b = f"{PREFIX}/{dev_b.device_id}/batch"
    db = Database(store)
    registry.register(db, DEV.did, "balcony")
    registry.register(db, dev_b.did, "garden")
    db.close()
    copies = 300
    honest = mb.Chain(ident=DEV).next().message
    chain_b = mb.Chain(ident=dev_b)
    with publisher(mosquitto.port) as pub:
        with _worker(store, tmp_path, mosquitto.port) as w:
            pub.publish(TOPIC, honest, qos=1).wait_for_publish(5)
            wait(lambda: len(w.recent) == 1, 10, "A's batch stored")
            for i in range(copies):
                pub.publish(TOPIC, honest, qos=1)
                pub.publish(topic_b, honest, qos=1)
                if i % 15 == 0:
                    pub.publish(topic_b, chain_b.next().message, qos=1)
            pub.publish(topic_b, chain_b.next().message, qos=1).wait_for_publish(10)
            sent_b = len(chain_b.built)

            def settled() -> bool:
                c = registry.counts(w.db)
                return (
                    _batches(w.db, dev_b.did) == sent_b
                    and c.get(DEV.did, {}).get("duplicate") == copies
                    and c.get("", {}).get("duplicate") == copies
                )

            wait(settled, 15, "B's batches and the copies counted")
            counts = registry.counts(w.db)
            assert counts[DEV.did] == {"valid": 1, "duplicate": copies}
            assert counts[dev_b.did] == {"valid": sent_b}
            assert _batches(w.db, DEV.did) == 1
        with _worker(store, tmp_path, mosquitto.port) as w:
            pub.publish(TOPIC, honest, qos=1).wait_for_publish(5)
            wait(
                lambda: registry.counts(w.db)[DEV.did]["duplicate"] == copies + 1,
                10,
                "the copy judged from the store",
            )
            assert _batches(w.db, DEV.did) == 1


def test_the_priority_lane_serves_devices_in_turn() -> None:
    """A device with a long backlog delays another device's message by one turn, not by the
    backlog; each device's own messages keep their order."""
    lanes = Lanes(1 << 20)
    stop = threading.Event()
    for i in range(5):
        lanes.put_priority(Item("p/a/batch", bytes([i]), i, 1, 0, False, "a"), stop)
    lanes.put_priority(Item("p/b/batch", b"b", 9, 1, 0, False, "b"), stop)
    order = [item.device + str(item.mid) for item in iter(lambda: lanes.get(0), None)]
    assert order == ["a0", "b9", "a1", "a2", "a3", "a4"]
    assert lanes.held == 0


# --- late batches: a new revision ---------------------------------------------------------------


def _payload(message: bytes) -> dict[int, Any]:
    m = cbor2.loads(cose.verify1(message).payload)
    assert isinstance(m, dict)
    return m


def test_a_late_batch_raises_the_score_in_a_new_revision(w: Worker) -> None:
    assert w.handle(TOPIC, birth(DEV, started=START)).kind == "birth"
    chain = mb.Chain(ident=DEV)
    built = chain.take(6)
    for b in built[:3]:
        assert w.handle(TOPIC, b.message).kind == "valid"
    assert w.tick(now=START + EPOCH + 1) == 1
    (first,) = registry.attestations(w.db)
    (_, _, revision, message) = registry.unpublished(w.db)[0]
    assert revision == 0 and 11 not in _payload(message)
    registry.mark_published(w.db, DEV.did, START, 0)
    # Held back past grace by whoever sits between the device and the attestor.
    for b in built[3:]:
        assert w.handle(TOPIC, b.message).kind == "valid"
    assert w.tick(now=START + EPOCH + 2) == 1
    (second,) = registry.attestations(w.db)
    assert second["revision"] == 1
    assert second["verified"] == 2 * first["verified"]
    assert second["score"] > first["score"]
    (_, _, revision, message) = registry.unpublished(w.db)[0]
    p = _payload(message)
    assert (revision, p[11], p[6], p[9]) == (1, 1, second["verified"], second["score"])
    # Nothing new: no further revision.
    assert w.tick(now=START + EPOCH + 3) == 0
    assert w.handle(TOPIC, built[4].message).kind == "duplicate"
    assert w.tick(now=START + EPOCH + 4) == 0
    old = w.db.execute("SELECT revision, message FROM superseded").fetchall()
    assert [(int(r), _payload(bytes(m))[6]) for r, m in old] == [(0, first["verified"])]


def test_two_workers_sign_one_revision(store: str, tmp_path: Path) -> None:
    a = Worker(_cfg(store, tmp_path), ATTESTOR)
    b = Worker(_cfg(store, tmp_path), ATTESTOR)
    try:
        registry.register(a.db, DEV.did, "balcony", now=START)
        chain = mb.Chain(ident=DEV)
        built = chain.take(4)
        a.handle(TOPIC, birth(DEV, started=START))
        a.handle(TOPIC, built[0].message)
        assert a.tick(now=START + EPOCH + 1) + b.tick(now=START + EPOCH + 1) == 1
        for x in built[1:]:
            b.handle(TOPIC, x.message)
        results: list[int] = []
        threads = [
            threading.Thread(target=lambda x=x: results.append(x.tick(now=START + EPOCH + 2)))
            for x in (a, b)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert sorted(results) == [0, 1]
        (att,) = registry.attestations(a.db)
        assert att["revision"] == 1
    finally:
        a.db.close()
        b.db.close()


def test_an_older_store_gets_revisions(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    Database(str(path)).close()
    con = sqlite3.connect(path)
    con.execute("ALTER TABLE attestations DROP COLUMN revision")
    con.execute("ALTER TABLE attestations DROP COLUMN stale")
    con.execute("DROP TABLE superseded")
    con.close()
    w = Worker(_cfg(str(path), tmp_path), ATTESTOR)
    try:
        registry.register(w.db, DEV.did, "balcony", now=START)
        chain = mb.Chain(ident=DEV)
        w.handle(TOPIC, birth(DEV, started=START))
        w.handle(TOPIC, chain.next().message)
        assert w.tick(now=START + EPOCH + 1) == 1
        w.handle(TOPIC, chain.next().message)
        assert w.tick(now=START + EPOCH + 2) == 1
        assert registry.attestations(w.db)[0]["revision"] == 1
    finally:
        w.db.close()


# --- evidence is bounded ------------------------------------------------------------------------


def _store_bytes(w: Worker, store: str) -> int:
    if w.db.dialect == "sqlite":
        w.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return os.path.getsize(store)
    row = w.db.execute(
        "SELECT coalesce(sum(length(message)), 0) + count(*) * 100 FROM evidence"
    ).fetchone()
    return int(row[0])


def test_a_device_equivocating_1000_times_cannot_grow_the_store(w: Worker, store: str) -> None:
    chain = mb.Chain(ident=DEV)
    first = chain.next()
    assert w.handle(TOPIC, first.message).kind == "valid"
    big = [mb.record(i) for i in range(200)]  # about 12 kB per batch
    for i in range(20):
        assert w.handle(TOPIC, chain.alternative(0, [*big, mb.record(1000 + i)]).message).kind == (
            "equivocation"
        )
    after_20 = _store_bytes(w, store)
    for i in range(20, 1000):
        w.handle(TOPIC, chain.alternative(0, [*big, mb.record(1000 + i)]).message)
    after_1000 = _store_bytes(w, store)
    assert registry.counts(w.db)[DEV.did]["equivocation"] == 1000
    rows = w.db.execute(
        "SELECT count(*), sum(CASE WHEN length(message) > 0 THEN 1 ELSE 0 END) FROM evidence"
    ).fetchone()
    assert (int(rows[0]), int(rows[1])) == (16, 16)  # whole; the epoch has its row already
    assert after_1000 - after_20 < 64 * 1024, (after_20, after_1000)
    # The epoch's status still says so.
    assert w.tick(now=START + 2 * EPOCH) >= 1
    assert [a["status"] for a in registry.attestations(w.db, epoch=START)] == ["equivocation"]


# --- the edges: passwords, plain text, a broker that is not there ------------------------------


def test_the_store_password_is_in_no_line(tmp_path: Path) -> None:
    key = tmp_path / "attestor.key"
    identity.generate(key)
    conf = tmp_path / "attestor.toml"
    conf.write_text(
        f'[attestor]\nkey_file = "{key}"\n'
        'store = "postgresql://attestor:Sup3r%2Fs3cret@127.0.0.1:1/attestor"\n'
        '[broker]\nurl = "mqtt://127.0.0.1:1"\n'
    )
    r = subprocess.run(
        [sys.executable, "-m", "gateway.attestor", "run", "-c", str(conf)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "127.0.0.1" in out
    assert "Sup3r" not in out and "s3cret" not in out


def test_plain_text_mqtt_off_this_machine_needs_insecure(tmp_path: Path) -> None:
    text = '[broker]\nurl = "mqtt://broker.example:1883"\nusername = "a"\npassword_env = "P"\n'
    with pytest.raises(Exception, match="insecure = true"):
        loads(text, base_dir=tmp_path)
    assert loads(text + "insecure = true\n", base_dir=tmp_path).insecure
    assert not loads('[broker]\nurl = "mqtts://broker.example"\n', base_dir=tmp_path).insecure


def test_a_broker_that_is_not_there_is_named_with_the_reason(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens on it once closed
    w = Worker(_cfg(str(tmp_path / "a.db"), tmp_path, port), ATTESTOR)
    stop = threading.Event()
    t = threading.Thread(target=w.run, args=(stop,), daemon=True)
    with caplog.at_level(logging.WARNING, logger="gateway.attestor"):
        t.start()
        wait(lambda: "cannot reach" in caplog.text, 10, "the warning")
        time.sleep(3)  # several attempts (1 s apart at first): one line
        stop.set()
        t.join(20)
    lines = [r.getMessage() for r in caplog.records if "cannot reach" in r.getMessage()]
    assert len(lines) == 1
    assert f"127.0.0.1:{port}" in lines[0] and "refused" in lines[0].lower()
