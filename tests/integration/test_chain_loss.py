"""A gateway never equivocates, whatever happens to its spool, and never runs twice.

The gateway runs as a real subprocess against a real mosquitto and is killed with SIGKILL; its
spool is then rolled back (an older WAL, a deleted -wal, an old backup) or moved aside, the way
a card, a person or a restore script does it. `verify` (gateway/wire/verify.py) then checks every
batch the broker delivered: no equivocation, no invalid batch, and each gap carries the reason
the device stated for it.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.device.highwater import HighWater
from gateway.wire import identity
from gateway.wire.verify import Finding, Verifier
from tests.brokers import Mosquitto
from tests.collector import Collector, assert_unbroken_chain, unique_batches
from tests.gatewayproc import GatewayProcess, write_config
from tests.received import received_readings

pytestmark = pytest.mark.slow

REASON = "(stated by the device)"


class Rig:
    """One gateway, its spool directory, the broker and a subscriber that keeps everything."""

    def __init__(self, tmp_path: Path, mosquitto: Mosquitto) -> None:
        self.broker = mosquitto
        self.cfg = write_config(tmp_path / "gw", mosquitto.port)
        self.dir = self.cfg.parent
        self.spool = self.dir / "spool.db"
        self.gw = GatewayProcess(self.cfg, tmp_path / "gw.log")
        self.collector = Collector(mosquitto.port)
        self.did = identity.load(self.dir / "device.key").did

    def delivered(self) -> int:
        """The highest seq the subscriber has."""
        return max((s for s, _, _ in unique_batches(self.collector.batches())), default=-1)

    def sealed(self) -> int:
        """The highest seq the gateway has sealed, from its chain record (SQLite stays shut:
        a reader closing the spool last would checkpoint and delete its WAL)."""
        rec = HighWater(self.dir / "spool.chain").read(self.did)
        return -1 if rec is None else rec.seq

    def run_a_while(self) -> None:
        self.gw.start()
        assert self.gw.wait_log("connected to", 20)
        assert self.collector.wait_for(lambda: self.delivered() >= 3, 20)

    def outage(self) -> int:
        """The broker goes away; wait until batches were sealed that it never got."""
        got = self.delivered()
        self.broker.stop()
        assert wait_until(lambda: self.sealed() >= got + 3, 20), "nothing sealed in the outage"
        return self.delivered()

    def restart_and_drain(self) -> list[Finding]:
        if not self.broker.proc or self.broker.proc.poll() is not None:
            self.broker.start()
        assert self.collector.wait_for(self.collector.client.is_connected, 20)
        self.gw.start()
        assert self.gw.wait_log("connected to", 20)
        top = self.sealed()
        assert self.collector.wait_for(lambda: self.delivered() > top + 2, 20)
        assert self.gw.terminate() == 0
        time.sleep(0.5)
        v = Verifier()
        found = [v.check(m) for m in self.collector.batches()]
        assert v.counts["equivocation"] == 0
        assert [f for f in found if f.forged] == []
        unique_batches(self.collector.batches())  # raises on two batches under one seq
        return found

    def close(self) -> None:
        self.collector.close()
        if self.gw.running():
            self.gw.kill()


@pytest.fixture
def rig(tmp_path: Path, mosquitto: Mosquitto) -> Iterator[Rig]:
    r = Rig(tmp_path, mosquitto)
    try:
        yield r
    finally:
        r.close()


def wait_until(cond: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def copy(files: list[Path], to: Path) -> None:
    to.mkdir(exist_ok=True)
    for f in files:
        if f.exists():
            shutil.copy2(f, to / f.name)


def gap_after(found: list[Finding], delivered: int) -> Finding:
    """The one gap: right after the last batch the subscriber had before the loss."""
    gaps = [f for f in found if f.kind == "gap"]
    assert len(gaps) == 1, [f.detail for f in gaps]
    assert gaps[0].detail.startswith(f"seq {delivered + 1}-"), gaps[0].detail
    return gaps[0]


def assert_once_each(rig: Rig) -> None:
    """No reading was signed into two batches."""
    got = received_readings(unique_batches(rig.collector.batches()))
    assert max(got.values()) == 1


def test_kill_9_and_a_rolled_back_wal(rig: Rig) -> None:
    rig.run_a_while()
    wal = Path(f"{rig.spool}-wal")
    then = rig.dir.parent / "then"
    copy([rig.spool, wal], then)  # the WAL as the card will bring it back
    # Batches sealed after that moment reach the broker: signing their seqs again would show.
    at_copy = rig.sealed()
    assert rig.collector.wait_for(lambda: rig.delivered() >= at_copy + 2, 20)
    delivered = rig.outage()
    rig.gw.kill()
    # A rolled-back WAL, not a restored database: nothing was checkpointed in between.
    assert rig.spool.read_bytes() == (then / rig.spool.name).read_bytes()
    shutil.copy2(then / wal.name, wal)
    Path(f"{rig.spool}-shm").unlink(missing_ok=True)
    found = rig.restart_and_drain()
    assert gap_after(found, delivered).detail.endswith(f"missing: spool-rolled-back {REASON}")
    assert_once_each(rig)
    log = rig.gw.log.read_text()
    assert "is behind its chain record" in log and "spool-rolled-back. The chain goes on" in log


def test_kill_9_and_a_deleted_wal(rig: Rig) -> None:
    rig.run_a_while()
    delivered = rig.outage()
    rig.gw.kill()
    Path(f"{rig.spool}-wal").unlink()
    found = rig.restart_and_drain()
    assert gap_after(found, delivered).detail.endswith(f"missing: spool-rolled-back {REASON}")
    assert_once_each(rig)


def test_spool_moved_aside(rig: Rig) -> None:
    rig.run_a_while()
    delivered = rig.outage()
    rig.gw.kill()
    aside = rig.dir.parent / "aside"
    aside.mkdir()
    for f in rig.dir.glob("spool.db*"):  # as a person would, with a glob
        shutil.move(f, aside)
    assert (rig.dir / "spool.chain").exists()  # the glob leaves the chain record
    found = rig.restart_and_drain()
    assert gap_after(found, delivered).detail.endswith(f"missing: spool-replaced {REASON}")
    assert_once_each(rig)


def test_spool_restored_from_an_old_backup(rig: Rig) -> None:
    rig.run_a_while()
    backup = rig.dir.parent / "backup.db"
    with sqlite3.connect(f"file:{rig.spool}?mode=ro", uri=True) as src:
        dst = sqlite3.connect(backup)
        src.backup(dst)  # an online backup, while the gateway runs
        dst.close()
    src.close()
    at_backup = rig.sealed()
    assert rig.collector.wait_for(lambda: rig.delivered() >= at_backup + 3, 20)
    delivered = rig.outage()
    rig.gw.kill()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{rig.spool}{suffix}").unlink(missing_ok=True)
    shutil.copy2(backup, rig.spool)
    found = rig.restart_and_drain()
    assert gap_after(found, delivered).detail.endswith(f"missing: spool-rolled-back {REASON}")
    assert_once_each(rig)


def test_two_daemons_started_at_once_20_times(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = write_config(tmp_path / "gw", mosquitto.port)
    collector = Collector(mosquitto.port)
    procs: list[GatewayProcess] = []
    try:
        for i in range(20):
            pair = [GatewayProcess(cfg, tmp_path / f"gw-{i}-{k}.log") for k in (0, 1)]
            procs += pair
            for gw in pair:
                gw.start()
            assert wait_until(lambda: not all(gw.running() for gw in pair), 30)  # noqa: B023
            (loser,) = [gw for gw in pair if not gw.running()]
            (winner,) = [gw for gw in pair if gw.running()]
            assert loser.proc is not None and winner.proc is not None
            assert loser.proc.returncode == 4, loser.log.read_text()
            text = loser.log.read_text()
            assert f"is in use by another gateway process (pid {winner.proc.pid})" in text
            assert "durable " not in text  # it never got as far as reading anything
            assert winner.wait_log("connected to", 20)
            time.sleep(0.2)
            winner.kill()
        last = GatewayProcess(cfg, tmp_path / "last.log")
        procs.append(last)
        last.start()
        assert last.wait_log("connected to", 20)
        time.sleep(1)
        assert last.terminate() == 0
        time.sleep(0.5)
        v = Verifier()
        found = [v.check(m) for m in collector.batches()]
        assert found and v.counts["equivocation"] == 0
        assert [f for f in found if f.forged] == []
        assert_unbroken_chain(unique_batches(collector.batches()))
    finally:
        collector.close()
        for gw in procs:
            if gw.running():
                gw.kill()
