"""sd_notify against a socket the test binds: READY once the gateway is up, WATCHDOG pings at
half the watchdog interval from a healthy loop, none while a sensor or the spool writer is stuck,
and STATUS lines an owner reads in `systemctl status`."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import settings as config
from gateway.device import sampler, watchdog
from gateway.device.daemon import Gateway
from gateway.monitor import sdnotify
from gateway.wire import identity
from tests.brokers import Mosquitto
from tests.gatewayproc import write_config


class Listener:
    """The systemd end: a datagram socket collecting (time, fields) messages."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            self.messages.append((time.monotonic(), data.decode().split("\n")))

    def times(self, field: str, since: float = 0.0) -> list[float]:
        return [t for t, fields in list(self.messages) if field in fields and t >= since]

    def statuses(self, since: float = 0.0) -> list[str]:
        return [
            f[len("STATUS=") :]
            for t, fields in list(self.messages)
            if t >= since
            for f in fields
            if f.startswith("STATUS=")
        ]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Listener]:
    sock = Listener(tmp_path / "notify.sock")
    yield sock
    sock.close()


def test_notify_is_a_no_op_outside_systemd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert sdnotify.watchdog_interval() is None  # meant for another process
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert sdnotify.watchdog_interval() == 30.0
    monkeypatch.setenv("WATCHDOG_USEC", "garbage")
    assert sdnotify.watchdog_interval() is None


def test_abstract_socket_address(monkeypatch: pytest.MonkeyPatch) -> None:
    name = f"depin-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("READY=1", "STATUS=up")
        assert s.recv(100) == b"READY=1\nSTATUS=up"


def test_gateway_process_is_ready_then_pings_at_half_the_interval(
    tmp_path: Path, mosquitto: Mosquitto, listener: Listener
) -> None:
    cfg = write_config(tmp_path / "gw", mosquitto.port, interval="0.2 s")
    env = {**os.environ, "NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": "1000000"}
    env.pop("WATCHDOG_PID", None)
    with (tmp_path / "gw.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "gateway", "run", "-c", str(cfg)],
            stdout=log,
            stderr=log,
            env=env,
        )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and len(listener.times("WATCHDOG=1")) < 8:
            time.sleep(0.1)
        proc.terminate()
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    ready = listener.times("READY=1")
    pings = listener.times("WATCHDOG=1")
    assert len(ready) == 1 and len(pings) >= 8, (tmp_path / "gw.log").read_text()[-2000:]
    assert ready[0] < pings[0]
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert 0.35 <= statistics.median(gaps) <= 0.75  # half of WatchdogSec=1 s
    assert max(gaps) < 1.0  # never late enough for systemd to restart a healthy gateway
    assert any("readings" in s and "broker connected" in s for s in listener.statuses())
    assert listener.times("STOPPING=1")


def _run_stalled(
    tmp_path: Path, port: int, monkeypatch: pytest.MonkeyPatch, listener: Listener, stall: str
) -> tuple[list[float], list[float], list[str], float, float]:
    """Run the gateway in this process; 2 s in, `stall` hangs for 3 s, then goes on."""
    monkeypatch.setenv("NOTIFY_SOCKET", str(listener.path))
    monkeypatch.setenv("WATCHDOG_USEC", "600000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    monkeypatch.setattr(sampler, "READ_STALL", 0.5)
    if stall != "slow-spool":  # a slow but working writer is judged at the real threshold
        monkeypatch.setattr(watchdog, "WRITER_STALL", 0.5)
    cfg = config.load(write_config(tmp_path / "gw", port, interval="0.1 s"))
    gw = Gateway(cfg, ident=identity.load(cfg.device.key_file))
    hang = threading.Event()

    def wait_while_hung() -> None:
        while hang.is_set():
            time.sleep(0.01)

    if stall in ("spool", "slow-spool"):
        commit = gw.spool.commit

        def stuck_commit(*a: object, **k: object) -> object:
            if stall == "slow-spool" and hang.is_set():
                time.sleep(0.4)  # a worn card: every commit slow, none stuck
            else:
                wait_while_hung()
            return commit(*a, **k)  # type: ignore[arg-type]

        monkeypatch.setattr(gw.spool, "commit", stuck_commit)
    else:
        driver = gw.sensors[0].driver
        read = driver.read

        def stuck_read(now: float) -> object:
            wait_while_hung()
            return read(now)

        monkeypatch.setattr(type(driver), "blocking", True)  # in a thread, as a bus driver
        monkeypatch.setattr(driver, "read", stuck_read)

    async def main() -> tuple[float, float]:
        stop = asyncio.Event()
        task = asyncio.create_task(gw.run(stop))
        await asyncio.sleep(2.0)
        hang.set()
        t0 = time.monotonic()
        await asyncio.sleep(3.0)
        hang.clear()
        t1 = time.monotonic()
        await asyncio.sleep(2.0)
        stop.set()
        await task
        return t0, t1

    try:
        t0, t1 = asyncio.run(main())
    finally:
        hang.clear()
    return listener.times("WATCHDOG=1"), listener.times("READY=1"), listener.statuses(), t0, t1


@pytest.mark.parametrize("stall", ["spool", "sensor"])
def test_no_watchdog_ping_while_stalled(
    tmp_path: Path,
    mosquitto: Mosquitto,
    monkeypatch: pytest.MonkeyPatch,
    listener: Listener,
    stall: str,
) -> None:
    pings, ready, statuses, t0, t1 = _run_stalled(
        tmp_path, mosquitto.port, monkeypatch, listener, stall
    )
    assert ready and pings
    before = [t for t in pings if t < t0]
    during = [t for t in pings if t0 + 1.2 < t < t1]  # detection takes up to ~2 periods
    after = [t for t in pings if t > t1 + 0.8]
    assert before, "no pings while healthy"
    assert during == [], f"pinged while the {stall} was stuck"
    assert after, "pings did not resume after recovery"
    what = "spool writer" if stall == "spool" else "sensor env"
    assert any(f"STALLED: {what}" in s for s in statuses)


def test_a_slow_spool_that_keeps_working_keeps_the_pings(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch, listener: Listener
) -> None:
    pings, _, statuses, t0, t1 = _run_stalled(
        tmp_path, mosquitto.port, monkeypatch, listener, "slow-spool"
    )
    during = [t for t in pings if t0 < t < t1]
    assert len(during) >= 8  # every 0.3 s for 3 s, commits of 0.4 s queued behind each other
    assert not any("STALLED" in s for s in statuses)
