"""An installation without the `litert` extra (no TFLite runtime, no numpy), as a fresh clone's
`pip install .` or a Pi without models has: the gateway runs, and a configuration that names a
`tflite` module is refused in one line that says what to install.

A runtime-only venv is simulated cheaply: the CLI runs in a subprocess whose first meta-path
finder refuses the extra's packages, as an interpreter that never had them would. (A real wheel
in a fresh venv is CI's smoke test, scripts/smoke-wheel.)"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import gateway.device.spool
from tests.brokers import Mosquitto
from tests.gatewayproc import write_config

EXTRA = ("numpy", "ai_edge_litert", "tflite_runtime")
#: whether this interpreter has the extra (CI's has; a venv of the runtime alone has not)
HAS_RUNTIME = any(importlib.util.find_spec(n) for n in EXTRA[1:])
HAS_NUMPY = importlib.util.find_spec("numpy") is not None

#: Run as `python -c BLOCKED -- NAMES... -- CLI ARGS...`.
BLOCKED = """\
import sys

args = sys.argv[1:]
cut = args.index("--", 1)
names, argv = set(args[1:cut]), args[cut + 1 :]


class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in names:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())
from gateway.cli.main import main

raise SystemExit(main(argv))
"""

TFLITE = '\n[[module]]\nid = "temperature-model"\nkind = "tflite"\nmodel = "temperature-ae"\n'


def without(names: tuple[str, ...], *args: str) -> list[str]:
    """The command line of `depin-gateway ARGS` in an interpreter without `names`."""
    return [sys.executable, "-c", BLOCKED, "--", *names, "--", *args]


def by_hand(**extra: str) -> dict[str, str]:
    """The environment of a shell, not of systemd."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **extra}
    env.pop("NOTIFY_SOCKET", None)
    env.pop("RUNTIME_DIRECTORY", None)
    return env


def run(names: tuple[str, ...], *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        without(names, *args),
        capture_output=True,
        text=True,
        timeout=60,
        env=by_hand(**env),
        stdin=subprocess.DEVNULL,
    )


def test_daemon_and_cli_import_no_model_runtime() -> None:
    """What `depin-gateway` and the daemon import by themselves: never the extra's packages
    (whoever asks for numpy is named, to find the culprit at once)."""
    code = """\
import sys, traceback

asked = []


class Watch:
    def find_spec(self, name, path=None, target=None):
        if name in ("numpy", "ai_edge_litert", "tflite_runtime"):
            frames = [f for f in traceback.extract_stack() if "importlib" not in f.filename]
            asked.append(f"{name} from {frames[-2].filename}")
        return None


sys.meta_path.insert(0, Watch())
import gateway.cli.main, gateway.device.daemon, gateway.monitor.status, gateway.models.store
print("\\n".join(asked))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    ours = [line for line in r.stdout.splitlines() if line and "/sqlite_utils/" not in line]
    assert ours == []


@pytest.mark.xfail(
    HAS_NUMPY and hasattr(gateway.device.spool, "sqlite_utils"),
    reason="gateway.device.spool imports sqlite_utils, which imports numpy whenever installed",
    strict=True,
)
def test_numpy_is_not_loaded_by_a_gateway_without_models() -> None:
    code = "import sys, gateway.cli.main, gateway.device.daemon; print('numpy' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("blocked", "says"),
    [
        (EXTRA, "no TFLite runtime is installed"),
        (("ai_edge_litert", "tflite_runtime"), "no TFLite runtime is installed"),
        # only numpy missing: a broken installation (the runtime needs it)
        (("numpy",), "numpy is not installed" if HAS_RUNTIME else "no TFLite runtime"),
    ],
    ids=["no-extra", "no-runtime", "no-numpy"],
)
@pytest.mark.parametrize("command", ["run", "config-check"])
def test_a_model_without_the_runtime_is_refused_in_one_line(
    tmp_path: Path, blocked: tuple[str, ...], says: str, command: str
) -> None:
    cfg = write_config(tmp_path / "gw", 1)
    with cfg.open("a") as f:
        f.write(TFLITE)
    args = ["run", "-c", str(cfg)] if command == "run" else ["config", "check", str(cfg)]
    r = run(blocked, *args)
    assert r.returncode == 2, r.stderr  # a configuration this installation cannot run
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert "temperature-model" in lines[0] and says in lines[0]
    assert "pip install 'depin-gateway[litert]'" in lines[0]
    assert not (tmp_path / "gw" / "spool.db").exists()  # refused before anything was opened


def test_without_the_extra_a_gateway_without_models_runs(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    cfg = write_config(tmp_path / "gw", mosquitto.port)
    with cfg.open("a") as f:
        f.write('\n[monitor]\nstate_interval = "1 s"\nhealth_interval = "1 s"\n')
    session = str(tmp_path)  # XDG_RUNTIME_DIR: where a gateway run by hand keeps its status
    checked = run(EXTRA, "config", "check", str(cfg))
    assert checked.returncode == 0, checked.stderr
    assert 'kind = "ranges"' in checked.stdout
    log = tmp_path / "gw.log"
    with log.open("w") as out:
        gw = subprocess.Popen(
            without(EXTRA, "run", "-c", str(cfg)),
            stdout=out,
            stderr=subprocess.STDOUT,
            env=by_hand(XDG_RUNTIME_DIR=session),
        )
    try:
        deadline = time.monotonic() + 30
        health: dict[str, object] = {}
        while time.monotonic() < deadline and not health.get("batches_acked"):
            time.sleep(0.3)
            r = run(EXTRA, "status", "-c", str(cfg), "--json", XDG_RUNTIME_DIR=session)
            assert r.returncode == 0, r.stderr
            health = (json.loads(r.stdout)["status"] or {}).get("health") or {}
        assert health.get("batches_acked"), log.read_text()
        gw.send_signal(signal.SIGTERM)
        assert gw.wait(30) == 0, log.read_text()
    finally:
        if gw.poll() is None:
            gw.kill()
            gw.wait()
    text = log.read_text()
    assert "Traceback" not in text and "stopped:" in text
