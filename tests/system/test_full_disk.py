"""A full disk, on a real small file system: the gateway stays up, says so, and goes on by itself.

The spool lives on a tmpfs of a few hundred KiB that the test mounts (so the suite must run as
root) and fills with a file until the kernel says ENOSPC. The gateway is the real process with
a simulated sensor, publishing to a real mosquitto; what the broker delivered is checked with
the verifier: every reading the gateway reported durable arrives, in a chain with no gap and
nothing forged.

The gateway checkpoints its WAL when a commit meets a full disk, so that the WAL's own space
serves again; while something reads the spool (as `sqlite-utils` may, the docs say) the WAL
cannot start over, and only then does a full disk refuse its writes. The running-gateway tests
hold such a reader while the disk is full.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.wire import identity
from gateway.wire.verify import Verifier
from tests.brokers import Mosquitto
from tests.collector import Collector
from tests.gatewayproc import GatewayProcess, write_config
from tests.received import all_arrived

pytestmark = pytest.mark.slow

#: small enough to fill in a moment, big enough for the spool of a short run
DISK = "512k"


@contextlib.contextmanager
def small_disk(where: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.fail("tests/system/test_full_disk.py mounts a tmpfs and must run as root")
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        # Lazily: a gateway killed a moment ago may still hold a file there.
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(disk: Path) -> Path:
    """A file taking every last byte of `disk`."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 16, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
        with pytest.raises(OSError) as e:
            os.write(fd, b"\0")
        assert e.value.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


@contextlib.contextmanager
def reading(spool: Path) -> Iterator[None]:
    """A reader holding a snapshot of the spool: the WAL cannot start over meanwhile."""
    db = sqlite3.connect(spool, isolation_level=None)
    try:
        db.execute("BEGIN")
        db.execute("SELECT count(*) FROM readings").fetchone()
        yield
    finally:
        db.close()


def config(workdir: Path, port: int) -> Path:
    cfg = write_config(workdir, port)
    with cfg.open("a") as f:
        f.write('\n[monitor]\nstate_interval = "1 s"\nhealth_interval = "1 s"\n')
    return cfg


@contextlib.contextmanager
def gateway_on_a_small_disk(
    tmp_path: Path, port: int
) -> Iterator[tuple[Path, GatewayProcess, Collector, str]]:
    """The gateway's directory on a small disk, the gateway (not started yet), a collector on
    the broker, and the gateway's DID; the gateway killed after if still running."""
    collector = Collector(port)
    with small_disk(tmp_path / "disk") as disk:
        cfg = config(disk / "gw", port)
        did = identity.load(disk / "gw" / "device.key").did
        gw = GatewayProcess(cfg, tmp_path / "gw.log")
        try:
            yield disk, gw, collector, did
        finally:
            collector.close()
            if gw.running():
                gw.kill()


@contextlib.contextmanager
def filled_under(gw: GatewayProcess, disk: Path) -> Iterator[Path]:
    """The gateway started and connected, then its disk filled while a reader holds the spool;
    yields the filler with the reader still holding."""
    gw.start()
    assert gw.wait_log("connected to", 20)
    time.sleep(1)
    with reading(disk / "gw" / "spool.db"):
        filler = fill(disk)
        assert gw.wait_log("disk full: ", 30), "the full disk was never noticed"
        yield filler


def latest_health(collector: Collector) -> dict[str, Any] | None:
    found = [m for m in collector.messages if m.topic.endswith("/health") and m.payload]
    return json.loads(found[-1].payload) if found else None


def verify_delivered(collector: Collector, gw: GatewayProcess, did: str) -> None:
    """Every reading the gateway reported durable reached the broker, in batches that verify:
    nothing forged, no seq missing."""
    durable = gw.durable()
    assert durable, "the gateway stored nothing"
    assert collector.wait_for(lambda: all_arrived(collector, durable), 30), (
        "readings reported durable never reached the broker"
    )
    v = Verifier(allowed_dids=[did])
    findings = [v.check(m) for m in collector.batches()]
    assert not [f for f in findings if f.forged], [f for f in findings if f.forged][:3]
    assert v.missing(did) == []
    assert v.status(did) == "ok"


def test_a_disk_filling_up_under_the_gateway_holds_readings_and_resumes(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    with gateway_on_a_small_disk(tmp_path, mosquitto.port) as (disk, gw, collector, did):
        with filled_under(gw, disk) as filler:
            line = next(x for x in gw.log.read_text().splitlines() if "disk full: " in x)
            assert "writes refused" in line or "write refused" in line
            assert "readings held in memory" in line
            assert collector.wait_for(
                lambda: (
                    (h := latest_health(collector)) is not None
                    and h["disk_full"]
                    and h["writes_refused"] > 0
                ),
                20,
            ), f"health never said the disk was full: {latest_health(collector)}"
            time.sleep(3)
            assert gw.running(), "the gateway died on a full disk"
        filler.unlink()
        assert gw.wait_log("disk full no more", 30), "the gateway did not resume"
        assert collector.wait_for(
            lambda: (h := latest_health(collector)) is not None and not h["disk_full"], 20
        )
        time.sleep(2)
        assert gw.terminate() == 0
        verify_delivered(collector, gw, did)
        # Said once while it lasted, not at every refused write.
        assert gw.log.read_text().count("disk full: ") <= 3


def test_a_gateway_started_on_a_full_disk_waits_and_starts_when_there_is_room(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    with gateway_on_a_small_disk(tmp_path, mosquitto.port) as (disk, gw, collector, did):
        filler = fill(disk)
        gw.start()
        assert gw.wait_log("disk full: ", 30), gw.log.read_text()[-2000:]
        time.sleep(6)
        assert gw.running(), "the gateway exited on a full disk instead of waiting"
        text = gw.log.read_text()
        assert "waits for space to open its spool" in text
        assert "connected to" not in text and "Traceback" not in text
        filler.unlink()
        assert gw.wait_log("connected to", 30), "the gateway did not start once there was room"
        assert collector.wait_for(lambda: len(collector.batches()) >= 3, 30)
        assert gw.terminate() == 0
        verify_delivered(collector, gw, did)


def test_power_cut_on_a_full_disk_loses_nothing_durable(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    with gateway_on_a_small_disk(tmp_path, mosquitto.port) as (disk, gw, collector, did):
        with filled_under(gw, disk) as filler:
            time.sleep(1)
            gw.kill()
        filler.unlink()
        gw.start()
        assert collector.wait_for(lambda: gw.log.read_text().count("connected to") >= 2, 30)
        time.sleep(3)
        assert gw.terminate() == 0
        verify_delivered(collector, gw, did)
