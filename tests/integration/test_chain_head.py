"""What the chain record beside the spool cannot see, the chain head on the broker does.

Real gateway processes against a real mosquitto: the whole state directory lost, the spool and
its record restored together from an old backup, and a copy of the key running as a second
gateway. `verify` checks every batch the broker delivered.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.core.errors import KeyInUse
from gateway.core.health import Health
from gateway.device import head
from gateway.device.seal import SealedBatch
from gateway.wire import cose, identity, payloads
from gateway.wire.verify import Verifier
from tests import make_batches as mb
from tests.brokers import Mosquitto
from tests.collector import Collector, unique_batches
from tests.gatewayproc import GatewayProcess, write_config
from tests.received import received_readings
from tests.spools import make_spool, recs

pytestmark = pytest.mark.slow

STATE = ("spool.db", "spool.db-wal", "spool.db-shm", "spool.chain", "spool.lock")


class Rig:
    def __init__(self, tmp_path: Path, mosquitto: Mosquitto) -> None:
        self.cfg = write_config(tmp_path / "gw", mosquitto.port)
        self.dir = self.cfg.parent
        self.gw = GatewayProcess(self.cfg, tmp_path / "gw.log")
        self.collector = Collector(mosquitto.port)
        self.ident = identity.load(self.dir / "device.key")

    def delivered(self) -> int:
        return max((s for s, _, _ in unique_batches(self.collector.batches())), default=-1)

    def run_until(self, seq: int) -> None:
        self.gw.start()
        assert self.collector.wait_for(lambda: self.delivered() >= seq, 30)
        assert self.gw.terminate() == 0

    def verdict(self) -> Verifier:
        time.sleep(0.3)
        v = Verifier()
        for m in self.collector.batches():
            v.check(m)
        return v

    def heads(self) -> list[head.Head]:
        found = [
            head.read(m.payload, self.ident)
            for m in self.collector.messages
            if m.topic.endswith("/head") and m.payload
        ]
        return [h for h in found if h is not None]


@pytest.fixture
def rig(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[Rig]:
    r = Rig(tmp_path, mosquitto)
    yield r
    r.collector.close()
    if r.gw.running():
        r.gw.kill()


def test_a_lost_state_directory_takes_the_chain_up_after_the_head_on_the_broker(
    rig: Rig,
) -> None:
    rig.run_until(5)
    before = rig.delivered()
    heads = rig.heads()
    assert heads and max(h.seq for h in heads) >= before  # published ahead of the batches
    for name in STATE:  # a new SD card with the same key: nothing beside the spool survives
        (rig.dir / name).unlink(missing_ok=True)
    rig.run_until(before + 5)
    assert "behind the chain head the broker keeps" in rig.gw.log.read_text()
    v = rig.verdict()
    assert v.counts["equivocation"] == 0
    assert v.counts["prev-mismatch"] == 0
    seqs = [s for s, _, _ in unique_batches(rig.collector.batches())]
    assert seqs == sorted(set(seqs)) and seqs[0] == 0  # one chain, seq never reused
    assert len(seqs) == seqs[-1] + 1  # and, with a clean stop, no gap either


def test_a_spool_restored_with_its_record_from_a_backup_signs_no_seq_and_no_reading_twice(
    rig: Rig, tmp_path: Path
) -> None:
    rig.run_until(3)
    backup = tmp_path / "backup"
    backup.mkdir()
    for name in STATE[:4]:
        if (rig.dir / name).exists():
            shutil.copy2(rig.dir / name, backup / name)
    rig.run_until(rig.delivered() + 6)
    for name in STATE[:4]:  # the backup comes back, record and all
        (rig.dir / name).unlink(missing_ok=True)
        if (backup / name).exists():
            shutil.copy2(backup / name, rig.dir / name)
    top = rig.delivered()
    rig.run_until(top + 4)
    assert "behind the chain head the broker keeps" in rig.gw.log.read_text()
    v = rig.verdict()
    assert v.counts["equivocation"] == 0
    batches = unique_batches(rig.collector.batches())
    assert [s for s, _, _ in batches] == list(range(len(batches)))
    twice = {k: n for k, n in received_readings(batches).items() if n > 1}
    assert twice == {}


def test_an_old_head_replayed_by_a_stranger_changes_nothing(rig: Rig) -> None:
    rig.gw.start()
    try:
        assert rig.collector.wait_for(lambda: rig.delivered() >= 2, 30)
        old = next(m.payload for m in rig.collector.messages if m.topic.endswith("/head"))
        assert rig.collector.wait_for(lambda: rig.delivered() >= 6, 30)
        topic = f"depin/v1/{rig.ident.device_id}/head"
        rig.collector.client.publish(topic, old, qos=1, retain=False)
        stranger = mb.identity(mb.SEED_B)  # a valid head, but signed by another key
        forged = cose.sign1(
            stranger,
            cose.TYP_HEAD,
            head.encode(rig.ident.did, head.Head(10**6, bytes(32), 0, bytes(16), "x")),
        )
        rig.collector.client.publish(topic, forged, qos=1, retain=False)
        rig.collector.client.publish(topic, b"\x00" * 100_000, qos=1, retain=False)
        top = rig.delivered()
        assert rig.collector.wait_for(lambda: rig.delivered() >= top + 3, 30)
        assert rig.gw.running()
    finally:
        assert rig.gw.terminate() == 0
    assert "another gateway" not in rig.gw.log.read_text()


def test_a_copy_of_the_key_started_elsewhere_is_caught_and_stopped(
    rig: Rig, tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """A cloned image: same key (and so the same MQTT client id), its own spool. Whichever of
    the two first sees the other's head stops with exit code 5 and says why; the survivor's
    chain goes on alone, so the seqs both signed are only those of the few seconds before."""
    other_cfg = write_config(tmp_path / "copy", mosquitto.port)
    shutil.copy2(rig.dir / "device.key", other_cfg.parent / "device.key")
    other = GatewayProcess(other_cfg, tmp_path / "copy.log")
    pair = (rig.gw, other)
    rig.gw.start()
    try:
        assert rig.collector.wait_for(lambda: rig.delivered() >= 3, 30)
        other.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and all(g.running() for g in pair):
            time.sleep(0.1)
        stopped = [g for g in pair if not g.running()]
        assert stopped, "neither gateway noticed the other"
        after = rig.delivered()
        survivors = [g for g in pair if g.running()]
        if survivors:  # it goes on, alone
            assert rig.collector.wait_for(lambda: rig.delivered() >= after + 5, 30)
    finally:
        codes = [g.terminate() for g in pair if g.running()]
        if other.running():
            other.kill()
    assert codes in ([], [0])  # the survivor stops cleanly
    for g in stopped:
        assert g.proc is not None and g.proc.returncode == 5
        assert "another gateway signs with this device's key" in g.log.read_text()
    v = Verifier()
    clashes = [f.seq for f in map(v.check, rig.collector.batches()) if f.kind == "equivocation"]
    assert all(s is not None and s <= after for s in clashes)
    assert len(set(clashes)) <= 10


# --- the rules one by one, without a broker -------------------------------------------------


def _head(seq: int, *, taken: int, batch: bytes = b"\x11" * 32) -> head.Head:
    return head.Head(seq, batch, taken, b"\x22" * 16, "elsewhere")


def test_readings_of_this_run_survive_a_head_ahead_and_older_ones_it_counts_do_not(
    tmp_path: Path,
) -> None:
    """A fresh image whose network comes up late: what it read while it waited is sealed
    after the head, and only the readings of an old spool that the head counts as gone are
    not signed again."""
    s = make_spool(tmp_path / "spool.db", seal_ahead=100)
    s.held = True
    s.commit(recs(3))  # pending from an earlier run of this spool (it never reached a broker)
    s.close()
    s = make_spool(tmp_path / "spool.db", seal_ahead=100)
    s.held = True
    assert s.commit(recs(25, start=3)).sealed == []  # held: nothing sealed
    assert s.anchor(_head(9, taken=2)) is True  # 2 readings of the old spool went elsewhere
    assert (s.next_seq, s.stats().pending) == (10, 1 + 25)
    sealed = s.commit([], force_seal=True).sealed
    assert [seq for seq, _, _ in sealed] == [10, 11, 12]
    b = payloads.decode_batch(cose.verify1(sealed[0][1]).payload)
    assert b.prev == b"\x11" * 32
    s.close()


def test_a_head_behind_the_spool_changes_nothing_and_a_fork_stops_the_start(
    tmp_path: Path,
) -> None:
    s = make_spool(tmp_path / "spool.db")
    s.commit(recs(10))  # seq 0 sealed (10 readings a batch)
    assert s.next_seq == 1
    s.held = True
    with pytest.raises(KeyInUse, match="forked") as e:
        s.anchor(_head(0, taken=10))  # seq 0, but another batch than ours
    assert e.value.exit_code == 5 and s.held
    assert s.anchor(_head(0, taken=10, batch=s.position[1] if s.position else b"")) is False
    assert not s.held and s.next_seq == 1
    s.close()


def test_a_module_change_before_the_head_was_read_is_refused(tmp_path: Path) -> None:
    from gateway.config import settings as config
    from gateway.device.daemon import Gateway

    cfg = write_config(tmp_path / "gw", 1)
    gw = Gateway(config.load(cfg), ident=identity.load(tmp_path / "gw" / "device.key"))
    changed: list[str] = []
    assert gw.spool.held
    assert asyncio.run(gw.switch(lambda: changed.append("x"), changed.clear)) is False
    assert changed == []


def test_heads_before_the_anchor_are_kept_and_only_later_ones_stop_the_gateway(
    tmp_path: Path,
) -> None:
    """A head replayed live while the gateway reads the broker's (anyone can) is just another
    old head; after the anchor, one at or above where this run went on is a running copy."""
    from gateway.config import settings as config
    from gateway.device.uplink import Uplink

    cfg = config.load(write_config(tmp_path / "gw", 1))

    class Chain:
        boot = b"\x33" * 16

        def current(self) -> None:
            return None

        def read(self, message: bytes) -> head.Head | None:
            return None

        async def anchor(self, found: head.Head | None) -> int:
            return 0

    class Nothing:
        async def backlog(self) -> list[SealedBatch]:
            return []

        def acked(self, seq: int, n: int) -> None:
            pass

    async def birth() -> bytes:
        return b""

    up = Uplink(
        cfg.uplink,
        device_id="d",
        client_id="c",
        password=None,
        health=Health(),
        batches=Nothing(),
        birth=birth,
        chain_head=Chain(),
    )
    up._head_in(_head(3, taken=1), Chain())
    up._head_in(_head(7, taken=1), Chain())
    up._head_in(_head(5, taken=1), Chain())
    assert up._kept is not None and up._kept.seq == 7
    up._anchored_at = 8
    up._head_in(_head(7, taken=1), Chain())  # below: replayed, ignored
    with pytest.raises(KeyInUse, match="continued from seq 8"):
        up._head_in(_head(8, taken=1), Chain())


def test_a_broker_that_refuses_the_head_topic_gets_nothing_sealed(
    tmp_path: Path,
) -> None:
    """The device may publish its head but not read it back: the gateway says which topic it
    needs and seals nothing, rather than take the silence for "no head"."""
    acl = tmp_path / "acl"
    acl.write_text(
        "topic write depin/v1/+/head\n"
        + "".join(
            f"topic readwrite depin/v1/+/{t}\n"
            for t in ("batch", "birth", "status", "state", "health", "attestation", "model")
        )
        + "topic readwrite homeassistant/#\n"
    )
    broker = Mosquitto(tmp_path / "broker", listener_extra=f"allow_anonymous true\nacl_file {acl}")
    broker.start()
    rig = Rig(tmp_path, broker)
    try:
        rig.gw.start()
        assert rig.gw.wait_log("chain head", 30)
        time.sleep(2)
        assert rig.gw.running()
        assert rig.gw.terminate() == 0
    finally:
        rig.collector.close()
        if rig.gw.running():
            rig.gw.kill()
        broker.stop()
    log = rig.gw.log.read_text()
    assert "depin/v1/" in log and "/head" in log and "seals nothing" in log
    assert "readings stay in the spool unsealed" in log
    assert rig.collector.batches() == []
