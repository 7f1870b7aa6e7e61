"""`depin-gateway demo`: broker, gateway and verifier in one process, as a user runs it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway import config, demo, identity
from tests.brokers import Mosquitto

ROOT = Path(__file__).resolve().parent.parent


def run_demo(*args: str, timeout: float = 45.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", "demo", *args],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )


def figures(stdout: str) -> dict[str, str]:
    """The final summary's rows: `  name   value` after the 'summary' heading."""
    _, _, tail = stdout.partition("depin-gateway demo summary\n")
    assert tail, f"no final summary in:\n{stdout}"
    rows = {}
    for line in tail.splitlines():
        m = re.match(r"^  (\S[\w ]*?)\s{2,}(.*)$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    return rows


def first_int(text: str) -> int:
    m = re.match(r"(\d+)", text)
    assert m, text
    return int(m.group(1))


def check_run(p: subprocess.CompletedProcess[str]) -> dict[str, str]:
    out = f"stdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    assert p.returncode == 0, out
    f = figures(p.stdout)
    readings = first_int(f["readings"])
    acked = first_int(f["acknowledged"])  # readings acknowledged by the broker
    verified = first_int(f["verified"])
    assert readings > 0, out
    assert verified > 0, out
    assert verified == acked, out  # every acknowledged reading reached the verifier and passed
    assert first_int(f["flagged"]) >= 1, out  # the injected range fault
    assert first_int(f["forged"]) == 0, out
    assert f["result"].startswith("OK: every acknowledged reading verified"), out
    # not a terminal: one plain status line every 2 s, no carriage returns
    status = [line for line in p.stdout.splitlines() if line.startswith("t=")]
    assert len(status) >= 3, out
    assert "\r" not in p.stdout
    return f


def test_demo_with_embedded_broker() -> None:
    p = run_demo("--duration", "12")
    f = check_run(p)
    assert "embedded amqtt" in f["broker"]
    assert f["protocol"] == "gateway MQTT 3.1.1, verifier MQTT 3.1.1"  # amqtt has no MQTT 5
    assert "(removed)" in f["work dir"]
    assert not Path(f["work dir"].split(" (")[0]).exists()
    # The real SDS011 driver read the emulated chip over a pseudo-terminal: it discarded the
    # warm-up after its open, as on a real sensor.
    assert "warmup" in f["pm driver"]


def test_demo_with_real_broker_keeps_its_dir(mosquitto: Mosquitto, tmp_path: Path) -> None:
    work = tmp_path / "demo"
    p = run_demo("--duration", "10", "--broker", mosquitto.url, "--dir", str(work))
    f = check_run(p)
    assert f["broker"] == f"{mosquitto.url} (external)"
    assert f["protocol"] == "gateway MQTT 5, verifier MQTT 5"
    assert (work / "spool.db").exists()
    assert f["device"] == identity.load(work / "device.key").did


def test_ctrl_c_stops_cleanly(mosquitto: Mosquitto) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--broker", mosquitto.url],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 20
        for line in proc.stdout:  # wait until a batch went round
            if re.search(r"\| acked [1-9]", line) or time.monotonic() > deadline:
                break
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, f"{rest}\n{err}"
    f = figures(rest)
    assert first_int(f["verified"]) == first_int(f["acknowledged"]) > 0
    assert first_int(f["forged"]) == 0


def test_daemon_and_cli_never_load_amqtt() -> None:
    code = "import sys, gateway.cli, gateway.daemon; print('amqtt' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "False"


def test_demo_config_is_valid(tmp_path: Path) -> None:
    cfg = config.loads(demo.config_text("mqtt://127.0.0.1:1883", seed=7), base_dir=tmp_path)
    assert [s.id for s in cfg.sensors] == ["outdoor", "air", "co2"]
    chips = demo.config_text("mqtt://127.0.0.1:1883", seed=7, pm_port="/dev/ttyUSB0")
    by_id = {s.id: s.driver for s in config.loads(chips, base_dir=tmp_path).sensors}
    assert by_id == {"outdoor": "simulated", "climate": "bme280", "co2": "scd4x", "pm": "sds011"}
    assert cfg.uplink.protocol == "auto"
    assert cfg.uplink.batch_max_age <= 2
    assert cfg.spool.path == tmp_path / "spool.db"
    assert list(cfg.sensors[0].options["faults"]) == ["range"]


@pytest.mark.parametrize(
    ("url", "insecure"),
    [
        ("mqtt://127.0.0.1:1883", False),
        ("mqtt://localhost", False),
        ("mqtt://[::1]:1883", False),
        ("mqtt://broker.example.org", True),
        ("mqtt://192.0.2.7:1883", True),
        ("mqtts://broker.example.org", False),
    ],
)
def test_plain_text_to_another_machine_is_allowed_for_the_demo(url: str, insecure: bool) -> None:
    assert demo._needs_insecure(url) is insecure
    cfg = config.loads(demo.config_text(url, seed=1, insecure=insecure))
    assert cfg.uplink.insecure is insecure
