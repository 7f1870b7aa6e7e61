"""The attestor process under attack from the broker: a real `python -m gateway.attestor run`
under a memory limit, a real mosquitto, two honest devices publishing signed batches, and an
attacker with nothing but publish rights sending every class of hostile input at once, while
one honest batch per device is held back past grace.

What must hold: the process stays up, its memory stays under its limit, every honest batch is
stored, and the honest devices' scores are those of a quiet run (the same messages handed to a
worker with nothing else going on).
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.attestor import registry
from gateway.attestor.config import loads
from gateway.attestor.db import Database
from gateway.attestor.epochs import epoch_of
from gateway.attestor.service import Worker
from gateway.wire import cose
from gateway.wire.identity import Identity
from tests import attestorproc, hostile
from tests import make_batches as mb
from tests.attestorproc import wait
from tests.brokers import Mosquitto
from tests.integration.test_attestor_store import birth

pytestmark = pytest.mark.slow

PREFIX = "depin/v1"
EPOCH, GRACE = 4, 1
MIB = 1024 * 1024
INBOX = 16 * MIB
#: Address space (what the limit caps): this attestor peaked at 183 MiB under this attack
#: (threads reserve arenas and stacks beyond what they touch), so 256 MiB leaves headroom for
#: the inbox and a message being judged. One that queued or expanded what it is sent would pass
#: it within a second, and die.
ADDRESS_SPACE = 192 * MIB + 4 * INBOX
#: Resident memory: 57 MiB at its peak under this attack; beyond the inbox, a message being
#: judged and paho's buffer of the largest message a topic may carry.
RSS_LIMIT = 48 * MIB + INBOX + 16 * MIB
HONEST = [mb.identity(bytes([i]) * 32) for i in (7, 8)]
BATCHES = 4  # per device, in one epoch; the last is held back past grace


def _batches(dev: Identity, epoch: int) -> list[bytes]:
    out, prev = [], bytes(32)
    for seq in range(BATCHES):
        recs = [mb.record(0, t0=epoch), mb.record(1, t0=epoch)]
        message = mb.batch_at(dev, seq, prev, sealed=epoch + 0.5 + seq * 0.5, recs=recs)
        out.append(message)
        prev = hashlib.sha256(cose.verify1(message).payload).digest()
    return out


def _topic(dev: Identity | str, kind: str = "batch") -> str:
    return f"{PREFIX}/{dev if isinstance(dev, str) else dev.device_id}/{kind}"


def _quiet_scores(tmp_path: Path, epoch: int, births: dict[str, bytes]) -> dict[str, float]:
    """The scores of a quiet run: every message on time, to a worker alone."""
    cfg = loads(
        f'[attestor]\nstore = "{tmp_path / "quiet.db"}"\nepoch = "{EPOCH} s"\n'
        f'grace = "{GRACE} s"\n[broker]\nurl = "mqtt://127.0.0.1:1"\n'
    )
    w = Worker(cfg, mb.identity(mb.SEED_B))
    try:
        for dev in HONEST:
            registry.register(w.db, dev.did, dev.device_id[-6:], now=epoch - EPOCH)
            w.handle(_topic(dev, "birth"), births[dev.did], now=epoch - 1)
            for m in _batches(dev, epoch):
                assert w.handle(_topic(dev), m, now=epoch + 1).kind == "valid"
        w.tick(now=epoch + EPOCH + GRACE + 0.5)
        return {a["did"]: a["score"] for a in registry.attestations(w.db, epoch=epoch)}
    finally:
        w.db.close()


def _attacks() -> Iterator[tuple[str, bytes]]:
    """One round of everything an outsider sends, each on a batch or birth topic."""
    victim = HONEST[0]
    signed = {
        "bomb": hostile.signed(hostile.sharing_bomb()),
        "self-reference": hostile.signed(hostile.self_reference()),
        "deep": hostile.signed(hostile.deep_nesting(100_000)),
        **{f"tag-{k}": hostile.signed(v) for k, v in hostile.unknown_tags().items()},
        **{f"huge-{k}": hostile.signed(v) for k, v in hostile.huge_lengths().items()},
    }
    for name, message in signed.items():
        yield _topic(victim), message
        yield _topic(f"z{name}", "birth"), message
    yield _topic(victim), hostile.sharing_bomb()  # unsigned, raw
    yield _topic(victim), hostile.deep_nesting(100_000)
    yield _topic(victim), hostile.oversized(4 * MIB + 1)
    yield _topic(victim, "birth"), hostile.oversized(64 * 1024 + 1)
    for _ in range(5):  # validly signed batches of devices nobody registered
        stranger = mb.Chain(ident=hostile.throwaway())
        for b in stranger.take(2):
            yield _topic(stranger.ident), b.message
    junk = os.urandom(MIB)
    for i in range(10):  # unsigned junk, about 10 MiB a round
        yield _topic(f"junk{i}"), junk


def _attacker(port: int, stop: threading.Event, sent: list[int]) -> None:
    pub = mqtt.Client(CallbackAPIVersion.VERSION2)
    pub.max_queued_messages_set(200)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    try:
        while not stop.is_set():
            for topic, message in _attacks():
                if stop.is_set():
                    break
                info = pub.publish(topic, message, qos=sent[0] % 2)
                sent[0] += 1
                if info.rc == mqtt.MQTT_ERR_QUEUE_SIZE:
                    time.sleep(0.05)
            time.sleep(0.2)
    finally:
        pub.loop_stop()
        pub.disconnect()


def test_attestor_under_attack_keeps_honest_scores(tmp_path: Path, mosquitto: Mosquitto) -> None:
    store = tmp_path / "attestor.db"
    conf = attestorproc.write_config(
        tmp_path,
        mosquitto.port,
        store,
        epoch=f"{EPOCH} s",
        grace=f"{GRACE} s",
        tick="0.2 s",
        inbox_bytes=f"{INBOX // MIB} MiB",
    )
    db = Database(str(store))
    for dev in HONEST:
        registry.register(db, dev.did, dev.device_id[-6:])
    log = tmp_path / "attestor.log"
    proc = attestorproc.start(conf, log, preexec_fn=hostile.memory_limit(ADDRESS_SPACE))
    stop = threading.Event()
    sent = [0]
    attacker = threading.Thread(target=_attacker, args=(mosquitto.port, stop, sent))
    honest = mqtt.Client(CallbackAPIVersion.VERSION2)
    try:
        wait(lambda: b"connected to the broker" in log.read_bytes(), 20, "the attestor")
        epoch = epoch_of(time.time(), EPOCH) + 2 * EPOCH
        births = {d.did: birth(d, started=epoch - 0.5, interval=0.5) for d in HONEST}
        batches = {d.did: _batches(d, epoch) for d in HONEST}
        attacker.start()
        honest.connect("127.0.0.1", mosquitto.port)
        honest.loop_start()
        for dev in HONEST:
            honest.publish(_topic(dev, "birth"), births[dev.did], qos=1, retain=True)
            for m in batches[dev.did][:-1]:
                honest.publish(_topic(dev), m, qos=1)

        def attested() -> list[dict[str, object]]:
            return registry.attestations(db, epoch=epoch)

        # Signed once the epoch closed and grace passed, without the held-back batches.
        wait(lambda: len(attested()) == len(HONEST), 3 * EPOCH + 15, "the attestations")
        first = {a["did"]: a for a in attested()}
        for dev in HONEST:  # late: after grace
            honest.publish(_topic(dev), batches[dev.did][-1], qos=1)
        wait(lambda: all(a["revision"] == 1 for a in attested()), 15, "the revised attestations")
        time.sleep(1.0)  # the attacker keeps going a little longer
        assert proc.poll() is None, log.read_text()[-3000:]
        peak = hostile.peak_rss(proc.pid)
        assert sent[0] > 100
    finally:
        stop.set()
        if attacker.is_alive():
            attacker.join(20)
        honest.loop_stop()
        honest.disconnect()
        proc.terminate()
        proc.wait(20)
    assert peak < RSS_LIMIT, f"peak RSS {peak / MIB:.0f} MiB"
    stored = {d["did"]: d["batches"] for d in registry.devices(db)}
    assert stored == {d.did: BATCHES for d in HONEST}
    quiet = _quiet_scores(tmp_path, epoch, births)
    final = {a["did"]: a["score"] for a in registry.attestations(db, epoch=epoch)}
    assert final == quiet
    assert all(first[d]["score"] < final[d] for d in final)  # the late batch counted
    counts = registry.counts(db).get("", {})
    assert counts.get("oversized", 0) > 0 and counts.get("unknown-device", 0) > 0
    db.close()
