"""Real brokers on free loopback ports: a mosquitto tests can stop and start again, and amqtt
(MQTT 3.1.1 only) in the test's own event loop."""

from __future__ import annotations

import contextlib
import getpass
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str:
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if cand and Path(cand).exists():
            return cand
    raise RuntimeError("mosquitto is not installed: the test command installs it (scripts/test)")


class Mosquitto:
    """One broker process. Persistence is on so a persistent subscriber's queued messages and
    retained messages survive stop()/start(), as with a packaged broker."""

    def __init__(self, workdir: Path, *, port: int | None = None, listener_extra: str = "") -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        # Started as root, mosquitto would drop to its own user and could not write its log
        # and persistence file here: `user` keeps it who we are.
        self.conf.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"{listener_extra or 'allow_anonymous true'}\n"
            f"user {getpass.getuser()}\n"
            "persistence true\n"
            f"persistence_location {workdir}/\n"
            "autosave_interval 1\n"
            "max_queued_messages 100000\n"
            f"log_dest file {self.log}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
        )

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.proc = subprocess.Popen(
            [mosquitto_binary(), "-c", str(self.conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"mosquitto exited: {self.log.read_text()}") from None
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on {self.port}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@contextlib.asynccontextmanager
async def amqtt_broker() -> AsyncIterator[int]:
    """amqtt on a free loopback port: a broker that speaks MQTT 3.1.1 only."""
    from amqtt.broker import Broker

    port = free_port()
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "auth": {"allow-anonymous": True},
            "topic-check": {"enabled": False},
        }
    )
    await broker.start()
    try:
        yield port
    finally:
        await broker.shutdown()


@contextlib.contextmanager
def tls_mosquitto(
    folder: Path, pki: dict[str, Path], auth: str = "allow_anonymous true\n"
) -> Iterator[Mosquitto]:
    """A mosquitto that speaks TLS only and wants a client certificate from `pki`'s CA
    (tests/certs.py); `auth` says who else it lets in."""
    broker = Mosquitto(
        folder,
        listener_extra=(
            auth + f"cafile {pki['ca']}\ncertfile {pki['server']}\nkeyfile {pki['server_key']}\n"
            "require_certificate true\n"
        ),
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
