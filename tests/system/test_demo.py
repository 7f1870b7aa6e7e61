"""`depin-gateway demo`: broker, gateway and verifier in one process, as a user runs it."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import aiomqtt
import pytest

from gateway.cli import demo
from gateway.config import settings as config
from gateway.wire import identity
from tests.brokers import Mosquitto

ROOT = Path(__file__).resolve().parents[2]
WIDTH = 80  # what the live line must fit

# Runs the CLI with amqtt unimportable, as in a venv without the `demo` extra: a meta path
# finder that refuses it comes before every other finder. argv[1] "no-mosquitto" hides the
# mosquitto binary as well.
WITHOUT_AMQTT = """
import sys

class NoAmqtt:
    def find_spec(self, name, path=None, target=None):
        if name == "amqtt" or name.startswith("amqtt."):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, NoAmqtt())
from gateway.cli import main as cli
from gateway.cli import demo
if sys.argv[1] == "no-mosquitto":
    demo.MOSQUITTO_PATHS = ()
code = cli.main(sys.argv[2:])
assert "amqtt" not in sys.modules
sys.exit(code)
"""


def run_demo(
    *args: str, timeout: float = 45.0, without_amqtt: str | None = None
) -> subprocess.CompletedProcess[str]:
    head = [sys.executable, "-m", "gateway"]
    if without_amqtt is not None:
        head = [sys.executable, "-c", WITHOUT_AMQTT, without_amqtt]
    return subprocess.run(
        [*head, "demo", *args],
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


def flag_rows(stdout: str) -> list[str]:
    """The summary's `flags` row and its continuation lines: one flag each."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  flags "))
    rows = [lines[start][2:].removeprefix("flags").strip()]
    for line in lines[start + 1 :]:
        if not line.startswith(" " * 16):
            break
        rows.append(line.strip())
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
    # Only the injected faults and readings a sensor could not take carry flags: no correct
    # reading is called implausible (the indoor chips are not compared with the outdoor air).
    flags = flag_rows(p.stdout)
    assert any(row.startswith("range ") and "(outdoor)" in row for row in flags), out
    for row in flags:
        assert row.startswith("range ") or re.search(
            r"; all (out of range too|without a value)\)$", row
        ), out
    # What starts is listed before the first live line, in the order it starts.
    lines = p.stdout.splitlines()
    status = [n for n, line in enumerate(lines) if line.startswith("t=")]
    listing = "\n".join(lines[: status[0]])
    order = [listing.find(f"\n  {what} ") for what in ("broker", "sensors", "gateway", "verifier")]
    assert -1 not in order and order == sorted(order), out
    for sensor in ("outdoor", "co2"):
        assert re.search(rf"^ +(sensors +)?{sensor} .*, (indoor|outdoor)$", listing, re.M), out
    # not a terminal: one plain status line every 2 s, no carriage returns, 80 columns
    assert len(status) >= 3, out
    assert all(len(lines[n]) < WIDTH for n in status), out
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


async def retained(port: int, seconds: float = 1.5) -> dict[str, bytes]:
    """Everything the broker holds retained, as a new subscriber to '#' gets it."""
    found: dict[str, bytes] = {}
    async with aiomqtt.Client("127.0.0.1", port, identifier="retained-check") as client:
        await client.subscribe("#", qos=1)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                async for msg in client.messages:
                    if msg.retain and isinstance(msg.payload, bytes | bytearray):
                        found[str(msg.topic)] = bytes(msg.payload)
    return found


def test_demo_with_real_broker_keeps_its_dir_and_leaves_no_ghost(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    work = tmp_path / "demo"
    p = run_demo("--duration", "10", "--broker", mosquitto.url, "--dir", str(work))
    f = check_run(p)
    assert f["broker"] == f"{mosquitto.url} (external)"
    assert f["protocol"] == "gateway MQTT 5, verifier MQTT 5"
    assert (work / "spool.db").exists()
    ident = identity.load(work / "device.key")
    assert f["device"] == ident.did
    # The gateway announced itself retained (birth, status, state, health and a Home
    # Assistant config per entity); the demo took all of it back when it ended: a subscriber
    # now finds no trace of the device, and Home Assistant would remove it.
    m = re.fullmatch(r"nothing retained \(cleared (\d+) retained messages of this device\)",
                     f["left behind"])  # fmt: skip
    assert m and int(m.group(1)) >= 5, p.stdout
    left = asyncio.run(retained(mosquitto.port))
    ghosts = {
        t: v for t, v in left.items() if ident.device_id in t or ident.device_id.encode() in v
    }
    assert ghosts == {}


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
            if re.search(r" acked [1-9]", line) or time.monotonic() > deadline:
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


def test_without_amqtt_the_demo_starts_a_mosquitto_of_its_own() -> None:
    """A venv without the `demo` extra: the demo starts mosquitto on a free loopback port for
    itself and stops it at the end."""
    p = run_demo("--duration", "10", without_amqtt="amqtt-only")
    f = check_run(p)
    url = f["broker"].split(" ")[0]
    assert f["broker"] == f"{url} (own mosquitto)", p.stdout
    assert "a mosquitto of its own" in p.stdout and "amqtt is not installed" in p.stdout
    assert f["protocol"] == "gateway MQTT 5, verifier MQTT 5"
    port = int(url.rsplit(":", 1)[1])
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port)):
        pass  # the broker is gone with the demo


def test_without_amqtt_and_mosquitto_the_demo_says_what_to_install() -> None:
    p = run_demo("--duration", "5", without_amqtt="no-mosquitto", timeout=30)
    assert p.returncode != 0
    assert p.stdout == ""
    assert p.stderr.splitlines() == [
        "depin-gateway: error: no MQTT broker for the demo: install depin-gateway[demo] (the "
        "embedded amqtt broker) or mosquitto, or pass --broker mqtt://HOST:PORT"
    ]


def test_on_a_terminal_the_live_line_is_rewritten_within_80_columns() -> None:
    """On an 80-column terminal the live line is rewritten in place (carriage return, erase to
    the end of the line) and never wraps."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, WIDTH, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway", "demo", "--duration", "5", "--simulated"],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.PIPE,
        cwd=ROOT,
    )
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        _, err = proc.communicate(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out = b"".join(chunks).decode()
    assert proc.returncode == 0, f"{out}\n{err.decode()}"
    live = [
        part.removesuffix("\x1b[K")
        for line in out.split("\r\n")  # the terminal turns \n into \r\n
        for part in line.split("\r")
        if part.startswith("t=")
    ]
    assert len(live) >= 5, out  # rewritten twice a second
    assert all(len(part) < WIDTH for part in live), out
    assert re.search(r"\rt=\d+s readings \d+ acked \d+ verified \d+ flagged \d+ forged 0 ", out)
    assert "depin-gateway demo summary" in out


def test_daemon_and_cli_never_load_amqtt() -> None:
    code = "import sys, gateway.cli.main, gateway.device.daemon; print('amqtt' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT
    )
    assert out.stdout.strip() == "False"


def test_demo_config_is_valid(tmp_path: Path) -> None:
    cfg = config.loads(demo.config_text("mqtt://127.0.0.1:1883", seed=7), base_dir=tmp_path)
    assert [s.id for s in cfg.sensors] == ["outdoor", "air", "co2"]
    assert [s.placement for s in cfg.sensors] == ["outdoor", "outdoor", "indoor"]
    chips = demo.config_text("mqtt://127.0.0.1:1883", seed=7, pm_port="/dev/ttyUSB0")
    chips_cfg = config.loads(chips, base_dir=tmp_path)
    by_id = {s.id: (s.driver, s.placement) for s in chips_cfg.sensors}
    assert by_id == {
        "outdoor": ("simulated", "outdoor"),
        "climate": ("bme280", "indoor"),  # the emulated chips share one indoor air
        "co2": ("scd4x", "indoor"),
        "pm": ("sds011", "outdoor"),
    }
    assert [m.kind for m in chips_cfg.modules] == ["ranges", "plausibility"]
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
