"""The attestor worker against a store and a broker that go away and come back: a message the
store could not take is retried, never dropped unacked; a PostgreSQL connection the server
dropped is opened again; a reconnect to the broker never acks a message by a stale mid; a dead
worker process is started again. Real mosquitto and real PostgreSQL throughout; plus the birth
segments of the expected readings (a device rebooting near every epoch's end gains nothing)."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.attestor import registry
from gateway.attestor.config import loads
from gateway.attestor.db import Database
from gateway.attestor.epochs import expected_readings
from gateway.attestor.service import StoreAway, Worker
from gateway.wire import cose, payloads
from gateway.wire.verify import Finding
from tests import attestorproc
from tests import make_batches as mb
from tests.attestorproc import running, wait
from tests.brokers import Mosquitto
from tests.pg import SERVER, database
from tests.publisher import publisher

PREFIX = "depin/v1"
DEV = mb.identity(mb.SEED_A)
ATTESTOR = mb.identity(mb.SEED_B)
TOPIC = f"{PREFIX}/{DEV.device_id}/batch"


def _cfg(store: str, port: int, tmp_path: Path, extra: str = "") -> Any:
    return loads(
        f'[attestor]\nstore = "{store}"\nepoch = "1 h"\ngrace = "0 s"\ntick = "0.3 s"\n{extra}'
        f'[broker]\nurl = "mqtt://127.0.0.1:{port}"\n',
        base_dir=tmp_path,
    )


def _publish(pub: mqtt.Client, messages: list[bytes], topic: str = TOPIC) -> None:
    for m in messages:
        pub.publish(topic, m, qos=1).wait_for_publish(5)


def _stored(store: str) -> int:
    db = Database(store)
    try:
        return int(db.execute("SELECT count(*) FROM batches").fetchone()[0])
    finally:
        db.close()


def _left_with_the_broker(port: int, client_id: str) -> list[bytes]:
    """What the broker still holds for the worker's persistent session (unacked or queued)."""
    got: list[bytes] = []
    probe = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    probe.on_message = lambda _c, _u, m: got.append(bytes(m.payload))
    probe.connect("127.0.0.1", port)
    probe.loop_start()
    time.sleep(2.0)
    probe.loop_stop()
    probe.disconnect()
    return got


def _client_id(w: Worker) -> str:
    return str(w.client._client_id.decode())


# --- 1. the store away: the same message is retried, then acked -----------------------------


def test_store_outage_retries_each_message_until_stored_and_acks_it(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = str(tmp_path / "attestor.db")
    w = Worker(_cfg(store, mosquitto.port, tmp_path), ATTESTOR)
    registry.register(w.db, DEV.did, "balcony")
    down = threading.Event()
    real_tx, real_execute = w.db.transaction, w.db.execute

    def transaction() -> Any:
        if down.is_set():
            raise sqlite3.OperationalError("disk I/O error (the test's outage)")
        return real_tx()

    def execute(sql: str, params: Any = ()) -> Any:
        if down.is_set():
            raise sqlite3.OperationalError("disk I/O error (the test's outage)")
        return real_execute(sql, params)

    monkeypatch.setattr(w.db, "transaction", transaction)
    monkeypatch.setattr(w.db, "execute", execute)
    chain = mb.Chain(ident=DEV)
    built = chain.take(41)
    with running(w), publisher(mosquitto.port) as pub:
        _publish(pub, [built[0].message])
        wait(lambda: _stored(store) == 1, 10, "the first batch")
        down.set()
        _publish(pub, [b.message for b in built[1:31]])  # 30 during the outage
        time.sleep(2.0)
        assert _stored(store) == 1
        down.clear()
        wait(lambda: _stored(store) == 31, 30, "the outage's batches once the store is back")
        _publish(pub, [b.message for b in built[31:]])  # and later ones keep flowing
        wait(lambda: _stored(store) == 41, 15, "the batches after the outage")
        time.sleep(0.5)
    counts = registry.counts(Database(store))[DEV.did]
    assert counts == {"valid": 41}  # each stored exactly once
    assert _left_with_the_broker(mosquitto.port, _client_id(w)) == []  # and each acked


# --- 2. PostgreSQL drops the connection ------------------------------------------------------


def _terminate(url: str) -> int:
    """Terminate every connection to the test database (a restart or failover, as seen by
    the client)."""
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(SERVER, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return len(rows)


def test_database_reconnects_after_the_server_dropped_it() -> None:
    with database() as url:
        db = Database(url)
        try:
            registry.register(db, DEV.did, "balcony")
            assert _terminate(url) == 1
            assert registry.is_registered(db, DEV.did)  # reconnected, statement sent again
            w = Worker(_cfg(url, 1, Path("/tmp")), ATTESTOR)
            w.db.close()
            w.db = db
            w._registered = frozenset({DEV.did})
            message = mb.Chain(ident=DEV).next().message
            assert _terminate(url) == 1
            # A transaction is not retried inside: it fails once (the worker retries the
            # message), and the next one runs on a new connection.
            with pytest.raises(RuntimeError):
                w.handle("t", message)
            assert w.handle("t", message).kind == "valid"
            assert w.handle("t", message).kind == "duplicate"
        finally:
            db.close()


def test_postgresql_connection_terminated_mid_stream(tmp_path: Path, mosquitto: Mosquitto) -> None:
    with database() as url:
        w = Worker(_cfg(url, mosquitto.port, tmp_path), ATTESTOR)
        # Registered three hours ago: the tick has three closed epochs to sign.
        registry.register(w.db, DEV.did, "balcony", now=time.time() - 3 * 3600)
        chain = mb.Chain(ident=DEV)
        built = chain.take(45)
        got: list[bytes] = []
        with running(w) as t, publisher(mosquitto.port) as pub:
            pub.on_message = lambda _c, _u, m: got.append(bytes(m.payload))
            pub.subscribe(f"{PREFIX}/+/attestation", qos=1)
            for part in range(3):
                batch = built[part * 15 : part * 15 + 15]
                _publish(pub, [b.message for b in batch[:8]])
                assert _terminate(url) >= 1  # mid-stream
                _publish(pub, [b.message for b in batch[8:]])
                want = 15 * part + 15
                wait(lambda: _stored(url) == want, 30, f"part {part}")  # noqa: B023
            wait(lambda: len(got) >= 3, 20, "the attestations")
            assert _terminate(url) >= 1  # while the worker idles: the tick reconnects
            time.sleep(1.0)
            assert t.is_alive()
            db = Database(url)
            try:
                assert registry.counts(db)[DEV.did]["valid"] == 45
                assert {a["published"] for a in registry.attestations(db)} == {True}
            finally:
                db.close()
        assert _left_with_the_broker(mosquitto.port, _client_id(w)) == []


def test_tick_and_publish_failures_do_not_end_the_worker(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = str(tmp_path / "attestor.db")
    w = Worker(_cfg(store, mosquitto.port, tmp_path), ATTESTOR)
    registry.register(w.db, DEV.did, "balcony")

    def broken(*_: Any) -> Any:
        raise sqlite3.OperationalError("the test's outage")

    monkeypatch.setattr(registry, "attestable", broken)
    assert w.tick() == 0  # logged, not raised
    monkeypatch.setattr(registry, "unpublished", broken)
    built = mb.Chain(ident=DEV).take(3)
    with running(w) as t, publisher(mosquitto.port) as pub:
        _publish(pub, [built[0].message])
        time.sleep(1.0)  # several ticks
        _publish(pub, [b.message for b in built[1:]])
        wait(lambda: _stored(store) == 3, 10, "the batches")
        assert t.is_alive()


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return {int(c) for c in path.read_text().split()} if path.exists() else set()


def test_supervisor_restarts_a_dead_worker_and_stops_all_on_sigterm(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    with database() as url:
        cfg = attestorproc.write_config(tmp_path, mosquitto.port, url, workers=2, tick="0.5 s")
        log = tmp_path / "attestor.log"
        sup = attestorproc.start(cfg, log)
        try:
            wait(lambda: len(_children(sup.pid)) == 2, 15, "two workers")
            first = _children(sup.pid)
            victim = max(first)
            os.kill(victim, signal.SIGKILL)
            wait(
                lambda: len(_children(sup.pid)) == 2 and victim not in _children(sup.pid),
                15,
                "the dead worker started again",
            )
            assert sup.poll() is None
            time.sleep(1.0)
            workers = _children(sup.pid)
            sup.send_signal(signal.SIGTERM)
            assert sup.wait(30) == 0
            for pid in workers:
                assert not Path(f"/proc/{pid}").exists()
        finally:
            if sup.poll() is None:
                sup.kill()
                sup.wait()
        assert "exited with -9; starting it again" in log.read_text()


# --- 3. a reconnect: stale mids are never acked, nothing is lost ------------------------------


def test_reconnect_drops_stale_messages_and_loses_none(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = str(tmp_path / "attestor.db")
    db = Database(store)
    registry.register(db, DEV.did, "balcony")  # signed batches of a registered device: the
    db.close()  # lane whose messages are acked only once stored
    w = Worker(_cfg(store, mosquitto.port, tmp_path), ATTESTOR)
    up = threading.Event()
    stored: Counter[bytes] = Counter()

    def handle(
        topic: str, payload: bytes, now: float | None = None, *, junk: bool = False
    ) -> Finding:
        if not up.is_set():
            raise StoreAway("not processed: the store is away")
        stored[payload] += 1
        return Finding("valid", None, None, None, 0, "", topic)

    # Which connection each message came on and each ack went out on (paho's own counting).
    conn = [0]
    received: set[tuple[int, int]] = set()
    acks: Counter[tuple[int, int]] = Counter()
    on_connect, on_message, ack = w._on_connect, w._on_message, w.client.ack

    def spy_connect(*args: Any) -> None:
        conn[0] += 1
        on_connect(*args)

    def spy_message(c: Any, u: Any, msg: mqtt.MQTTMessage) -> None:
        received.add((conn[0], msg.mid))
        on_message(c, u, msg)

    def spy_ack(mid: int, qos: int) -> Any:
        acks[(conn[0], mid)] += 1
        return ack(mid, qos)

    monkeypatch.setattr(w, "handle", handle)
    monkeypatch.setattr(w, "tick", lambda now=None: 0)
    w.client.on_connect = spy_connect
    w.client.on_message = spy_message
    monkeypatch.setattr(w.client, "ack", spy_ack)
    messages = [b.message for b in mb.Chain(ident=DEV).take(10)]
    with running(w):
        with publisher(mosquitto.port) as pub:
            _publish(pub, messages)
        wait(lambda: len(received) == 10, 10, "the messages")
        time.sleep(0.5)  # the worker retries the first; nine wait in its inbox
        mosquitto.stop()  # it saves the persistent session; the worker loses its connection
        mosquitto.start()
        wait(lambda: conn[0] == 2 and w.connected.is_set(), 20, "the reconnect")
        wait(lambda: len(received) >= 20, 10, "the messages delivered again")
        up.set()
        wait(lambda: set(stored) == set(messages), 10, "every message stored")
        time.sleep(1.0)
    # Nothing lost, none acked twice or by a mid of another connection.
    assert set(stored) == set(messages)
    assert max(acks.values()) == 1 and set(acks) <= received
    assert {c for c, _ in acks} == {2}
    assert _left_with_the_broker(mosquitto.port, _client_id(w)) == []


def test_stale_messages_of_a_forgotten_session_are_stored_not_acked(tmp_path: Path) -> None:
    w = Worker(_cfg(str(tmp_path / "a.db"), 1, tmp_path), ATTESTOR)
    present = type("Flags", (), {"session_present": True})()
    absent = type("Flags", (), {"session_present": False})()
    ok = type("Rc", (), {"is_failure": False})()
    client: Any = type("C", (), {"subscribe": lambda *_: None})()
    w._on_connect(client, None, absent, ok)
    first = w._connection
    w._on_disconnect()
    w._on_connect(client, None, present, ok)
    assert w._stale(first)  # the broker kept the session: it delivers them again
    w._on_disconnect()
    w._on_connect(client, None, absent, ok)
    assert not w._stale(first)  # the broker forgot them: they are stored (not acked)
    w.db.close()


# --- 5. expected readings over birth segments -------------------------------------------------

SENSORS = '[{"driver": "bme280", "id": "climate", "interval": 60, "quantities": ["t", "h"]}]'
HALF = '[{"driver": "bme280", "id": "climate", "interval": 120, "quantities": ["t"]}]'


def test_a_single_birth_is_scored_as_before() -> None:
    start, end = 3600, 7200
    # Born 30 minutes into the epoch: 2 quantities x 1800 s / 60 s.
    assert expected_readings([(5400.0, 5400.0, SENSORS)], start, end) == 60
    assert expected_readings([(0.0, 10.0, SENSORS)], start, end) == 120
    assert expected_readings([(5400.0, 999_999.0, SENSORS)], start, end) == 60  # received late
    assert expected_readings([(7200.0, 7200.0, SENSORS)], start, end) == 0


def test_a_fresh_birth_near_every_epoch_end_does_not_shrink_the_expectation() -> None:
    start, end = 3600, 7200
    births = [(0.0, 0.0, SENSORS), (7190.0, 7190.0, SENSORS)]
    # The old birth covers the epoch up to the new one: 2 x (3590 // 60) + 2 x (10 // 60),
    # where the latest birth alone made it 0.
    assert expected_readings(births, start, end) == 118
    # Claiming to have started later than the birth was received changes nothing.
    assert expected_readings([(0.0, 0.0, SENSORS), (7199.0, 4200.0, SENSORS)], start, end) == 120
    assert expected_readings([(7199.0, 3600.0, SENSORS)], start, end) == 120


def test_a_birth_received_after_the_epoch_cannot_lower_it() -> None:
    start, end = 3600, 7200
    late = [(0.0, 0.0, SENSORS), (3600.0, 7300.0, HALF)]  # backdated into the scored epoch
    assert expected_readings(late, start, end) == 120
    more = [(0.0, 0.0, HALF), (3600.0, 7300.0, SENSORS)]  # it may add
    assert expected_readings(more, start, end) == 120


def test_gaming_births_end_to_end(tmp_path: Path) -> None:
    """Through the worker: a device publishing a fresh birth a minute before each epoch ends
    keeps availability at what it really delivered."""
    w = Worker(_cfg(str(tmp_path / "a.db"), 1, tmp_path), ATTESTOR)
    epoch = 3600
    start = mb.SEALED - mb.SEALED % epoch
    registry.register(w.db, DEV.did, "balcony", now=start - epoch)
    sensors = [{"id": "climate", "driver": "bme280", "quantities": ["t", "h"], "interval": 60}]

    def birth(boot: bytes, started: float) -> bytes:
        payload = payloads.encode_birth(
            did=DEV.did, version="test", boot=boot, started=started, config_sha256=bytes(32),
            sensors=sensors, modules=mb.MODULES, next_seq=0,
        )  # fmt: skip
        return cose.sign1(DEV, cose.TYP_BIRTH, payload)

    assert w.handle("t", birth(b"\x01" * 16, start - epoch), now=start - epoch).kind == "birth"
    fresh = start + epoch - 60
    assert w.handle("t", birth(b"\x02" * 16, fresh), now=fresh).kind == "birth"
    chain = mb.Chain(ident=DEV)
    for _ in range(3):  # 9 readings in all
        assert w.handle("t", chain.next().message, now=start + 10).kind == "valid"
    w.tick(now=start + epoch + 1)
    (a,) = [x for x in registry.attestations(w.db) if x["epoch_start"] == start]
    assert a["expected"] == 2 * (epoch - 60) // 60 + 2 == 120  # not 2
    assert a["score"] < 0.1
    w.db.close()


# --- 4. the epoch loop reads the device rows; an older store is upgraded ---------------------


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_a_store_without_first_sealed_is_upgraded(tmp_path: Path, dialect: str) -> None:
    with contextlib.ExitStack() as stack:
        url = str(tmp_path / "a.db") if dialect == "sqlite" else stack.enter_context(database())
        db = Database(url)
        registry.register(db, DEV.did, "balcony", now=float(mb.SEALED))
        w = Worker(_cfg(url, 1, tmp_path), ATTESTOR)
        for b in mb.Chain(ident=DEV).take(2):
            assert w.handle("t", b.message).kind == "valid"
        w.db.close()
        assert [r[:2] for r in registry.attestable(db)] == [(DEV.did, float(mb.SEALED))]
        # As a store made before the column: dropped, then opened again.
        db.execute("ALTER TABLE devices DROP COLUMN first_sealed")
        db.close()
        db = Database(url)
        try:
            assert [r[:2] for r in registry.attestable(db)] == [(DEV.did, float(mb.SEALED))]
        finally:
            db.close()
