"""A gateway started by hand, not by systemd: `depin-gateway status` finds it (and only it), and
the daemon says now and then what it does instead of staying silent."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config import settings as config
from gateway.device import progress
from gateway.device.daemon import Gateway
from gateway.monitor import status
from gateway.wire import identity
from tests.brokers import Mosquitto
from tests.gatewayproc import write_config

FAST_MONITOR = '\n[monitor]\nstate_interval = "1 s"\nhealth_interval = "1 s"\n'


def shell_env(session: Path | None) -> dict[str, str]:
    """A login shell's environment (with or without a session runtime directory), not the
    environment systemd gives a unit."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in ("NOTIFY_SOCKET", "RUNTIME_DIRECTORY", "XDG_RUNTIME_DIR"):
        env.pop(name, None)
    if session is not None:
        env["XDG_RUNTIME_DIR"] = str(session)
    return env


class ByHand:
    """`depin-gateway run -c CONFIG` typed into a shell."""

    def __init__(self, cfg: Path, env: dict[str, str]) -> None:
        self.cfg = cfg
        self.env = env
        self.log = cfg.parent / "run.log"
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "-c", str(cfg)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=cfg.parent,
            )

    def status(self, *extra: str) -> str:
        r = subprocess.run(
            [sys.executable, "-m", "gateway", "status", "-c", str(self.cfg), *extra],
            capture_output=True,
            text=True,
            timeout=30,
            env=self.env,
        )
        assert r.returncode == 0, r.stderr
        return r.stdout

    def wait_status(self, *wanted: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        out = ""
        while time.monotonic() < deadline:
            out = self.status()
            if all(w in out for w in wanted):
                return out
            time.sleep(0.3)
        raise AssertionError(f"status never showed {wanted}:\n{out}\n{self.log.read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(30)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def started() -> Iterator[list[ByHand]]:
    gateways: list[ByHand] = []
    yield gateways
    for g in gateways:
        g.close()


@pytest.mark.parametrize("session", [True, False], ids=["session-runtime-dir", "no-session"])
def test_status_of_a_gateway_started_by_hand(
    tmp_path: Path, mosquitto: Mosquitto, started: list[ByHand], session: bool
) -> None:
    cfg = write_config(tmp_path / "gw", mosquitto.port, interval="0.2 s")
    with cfg.open("a") as f:
        f.write(FAST_MONITOR)
    if session:
        (tmp_path / "session").mkdir()
    gw = ByHand(cfg, shell_env(tmp_path / "session" if session else None))
    started.append(gw)
    out = gw.wait_status("env/temperature", "  connected to", "last sealed batch seq")
    device = identity.load(tmp_path / "gw" / "device.key")
    assert f"device {device.did}" in out
    assert "daemon: status" in out and "up " in out
    assert " Cel " in out and "from the spool" not in out  # the daemon's latest values
    assert "waiting for the broker" in out  # the queue
    assert f"  connected to 127.0.0.1:{mosquitto.port} (MQTT 5)" in out  # the uplink
    where = Path(json.loads(gw.status("--json"))["status"]["_path"])
    if session:
        assert where.parent == tmp_path / "session" / "depin-gateway"
    else:
        # in memory (tmpfs), never on the SD card: it is rewritten every state_interval
        assert where.parent == Path(f"/dev/shm/depin-gateway-{os.getuid()}")
    assert gw.stop() == 0
    # Stopped: nothing left behind, and status says so rather than showing old values.
    assert not where.exists()
    after = gw.status()
    assert "daemon: not running" in after and "  connected to" not in after


def test_two_gateways_by_hand_each_have_their_own_status(
    tmp_path: Path, mosquitto: Mosquitto, started: list[ByHand]
) -> None:
    env = shell_env(tmp_path / "session")
    (tmp_path / "session").mkdir()
    devices = {}
    for name in ("a", "b"):
        cfg = write_config(tmp_path / name, mosquitto.port, interval="0.2 s")
        cfg.write_text(
            cfg.read_text().replace('"test-gateway"', f'"gateway-{name}"') + FAST_MONITOR
        )
        devices[name] = identity.load(tmp_path / name / "device.key").device_id
        started.append(ByHand(cfg, env))
    a, b = started
    for gw in started:
        gw.wait_status("env/temperature", "  connected to")
    facts = {
        n: json.loads(g.status("--json"))["status"] for n, g in zip("ab", started, strict=True)
    }
    for name, doc in facts.items():
        assert doc["health"]["device"] == devices[name]
        assert doc["state"]["name"] == f"gateway-{name}"
    assert facts["a"]["_path"] != facts["b"]["_path"]
    # One killed (no clean stop: its file stays behind): its status does not pretend it runs,
    # and the other's is untouched.
    assert a.stop(signal.SIGKILL) == -signal.SIGKILL
    assert Path(facts["a"]["_path"]).exists()
    assert "daemon: not running" in a.status()
    assert "  connected to" in b.wait_status("  connected to")
    # The next gateway started there clears the dead one's file away.
    c = ByHand(write_config(tmp_path / "c", mosquitto.port, interval="0.2 s"), env)
    started.append(c)
    c.wait_status("  connected to")
    assert not Path(facts["a"]["_path"]).exists()
    assert Path(facts["b"]["_path"]).exists()


def test_status_under_systemd_is_not_mistaken_for_one_run_by_hand(
    tmp_path: Path, mosquitto: Mosquitto, started: list[ByHand]
) -> None:
    """systemd's runtime directory holds its gateway's file: `status -c` of another
    configuration, run where that directory is in view, does not show it."""
    unit = tmp_path / "run"
    unit.mkdir()
    cfg = write_config(tmp_path / "service", mosquitto.port, interval="0.2 s")
    with cfg.open("a") as f:
        f.write(FAST_MONITOR)
    env = {**shell_env(None), "RUNTIME_DIRECTORY": str(unit)}
    service = ByHand(cfg, env)
    started.append(service)
    service.wait_status("env/temperature", "  connected to")
    assert (unit / status.STATUS_FILE).exists()
    other = write_config(tmp_path / "other", mosquitto.port)
    r = subprocess.run(
        [sys.executable, "-m", "gateway", "status", "-c", str(other)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert r.returncode == 0, r.stderr
    assert "daemon: not running" in r.stdout and "  connected to" not in r.stdout


# --------------------------------------------------------------------------- saying what it does


def _run(tmp_path: Path, port: int, mosquitto: Mosquitto | None = None) -> list[str]:
    """Run a gateway in this process for a few seconds; its INFO lines from the "gateway"
    logger. With `mosquitto`, the broker goes away 3 s in and comes back 3 s later."""
    cfg = config.load(write_config(tmp_path / "gw", port, interval="0.1 s"))
    gw = Gateway(cfg, ident=identity.load(cfg.device.key_file))
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.name == "gateway" and record.levelno == logging.INFO:
                lines.append(record.getMessage())

    handler = Keep()
    logger = logging.getLogger("gateway")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(gw.run(stop))
        await asyncio.sleep(3.5)
        if mosquitto is not None:
            mosquitto.stop()
            await asyncio.sleep(3.0)
            mosquitto.start()
            await asyncio.sleep(3.0)
        stop.set()
        await task

    try:
        asyncio.run(main())
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return lines


def _progress(lines: list[str]) -> list[str]:
    return [x for x in lines if "readings since start" in x]


def test_by_hand_the_daemon_says_what_it_does(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    monkeypatch.setattr(progress, "PROGRESS_INTERVAL", 1.0)  # 60 s by default
    lines = _progress(_run(tmp_path, mosquitto.port, mosquitto))
    up = [x for x in lines if x.startswith("broker connected (MQTT 5); ")]
    assert len(up) >= 3, lines  # once a second while connected
    # e.g. "broker connected (MQTT 5); 140 readings since start, 70 in the last 1 s;
    #       2 batches acknowledged; 20 readings queued"
    first = up[0].split("; ")
    assert first[1].endswith(" in the last 1 s") and " readings since start, " in first[1]
    assert first[2].endswith(" batches acknowledged") and first[3].endswith(" readings queued")
    totals = [int(x.split("; ")[1].split()[0]) for x in up]
    assert totals == sorted(totals) and totals[-1] > totals[0] > 0
    # The broker going away and coming back is said at once, in the same words.
    away = next(i for i, x in enumerate(lines) if x.startswith("broker away; "))
    assert any(x.startswith("broker connected") for x in lines[away + 1 :]), lines


def test_under_systemd_only_changes_are_logged(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    # STATUS= carries the figures; the journal does not get a line a minute.
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    monkeypatch.setattr(progress, "PROGRESS_INTERVAL", 1.0)
    assert _progress(_run(tmp_path, mosquitto.port)) == []
