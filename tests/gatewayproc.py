"""The gateway as a real subprocess, the way systemd runs it, with its log in a file."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.wire import identity

DURABLE = re.compile(r"durable (\S+) t=(\S+) v=")


RANGES = '[[module]]\nid = "physics"\nkind = "ranges"\n'


def write_config(
    workdir: Path,
    port: int,
    *,
    name: str = "test-gateway",
    batch_max_readings: int = 50,
    extra_uplink: str = "",
    spool: str = "",
    sensor: str = "",
    interval: str = "0.05 s",
    module: str = RANGES,
    extra: str = "",
) -> Path:
    """gateway.toml in `workdir` with a device key beside it (kept if there is one); `extra` is
    appended: whole sections."""
    workdir.mkdir(parents=True, exist_ok=True)
    key = workdir / "device.key"
    if not key.exists():
        identity.generate(key)
    cfg = workdir / "gateway.toml"
    cfg.write_text(f"""
[device]
name = "{name}"
key_file = "device.key"

[spool]
path = "spool.db"
commit_interval = "0.2 s"
{spool}

[uplink]
url = "mqtt://127.0.0.1:{port}"
batch_max_readings = {batch_max_readings}
batch_max_age = "1 s"
reconnect_max = "1 s"
{extra_uplink}

[clock]
mode = "synced"

[[sensor]]
id = "env"
driver = "simulated"
interval = "{interval}"
kind = "all"
seed = 3
{sensor}

{module}
{extra}""")
    return cfg


def write_model_config(
    workdir: Path, port: int, signer_did: str, *, name: str, extra: str = ""
) -> Path:
    """A gateway running the shipped temperature model, taking model updates signed by
    `signer_did`; 20 readings a batch."""
    models = Path(__file__).resolve().parents[1] / "models"
    return write_config(
        workdir,
        port,
        name=name,
        batch_max_readings=20,
        sensor='quantities = ["temperature", "humidity"]',
        module=f'[[module]]\nid = "temperature-model"\nkind = "tflite"\nmodel = "temperature-ae"\n'
        f'models_dir = "{models}"\n',
        extra=f'[models]\ntrusted_model_signers = ["{signer_did}"]\n{extra}',
    )


class GatewayProcess:
    def __init__(self, config: Path, log: Path) -> None:
        self.config = config
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "gateway",
                    "run",
                    "-c",
                    str(self.config),
                    "--log-level",
                    "debug",
                ],
                stdout=out,
                stderr=out,
                cwd=self.config.parent,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def durable(self) -> list[tuple[str, float]]:
        """Every reading the gateway reported durable, from its log."""
        return [(m[1], float(m[2])) for m in DURABLE.finditer(self.log.read_text())]

    def wait_log(self, text: str, timeout: float = 20) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log.exists() and text in self.log.read_text():
                return True
            time.sleep(0.05)
        return False
