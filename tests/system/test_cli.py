"""The command line as a user meets it: identity, refusals at start, verify, exit codes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gateway.device.spool import Spool
from gateway.wire import identity
from tests.brokers import Mosquitto
from tests.cli import cli
from tests.collector import Collector, assert_unbroken_chain, unique_batches
from tests.gatewayproc import GatewayProcess, write_config


def test_keygen_creates_a_private_key_and_never_overwrites_it(tmp_path: Path) -> None:
    key = tmp_path / "state" / "device.key"
    r = cli("keygen", "--key", str(key))
    assert r.returncode == 0, r.stderr
    did = next(x.split()[-1] for x in r.stdout.splitlines() if x.startswith("did:"))
    assert did.startswith("did:key:z6Mk") and len(did) == 56
    assert f"device id: {did.removeprefix('did:key:')}" in r.stdout
    assert key.stat().st_mode & 0o777 == 0o600
    assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8 PEM
    before = key.read_bytes()
    again = cli("keygen", "--key", str(key))
    assert again.returncode == 3
    assert "already exists" in again.stderr
    assert key.read_bytes() == before
    show = cli("identity", "show", "--key", str(key))
    assert show.returncode == 0 and did in show.stdout


def test_python_dash_m_and_console_command_agree(tmp_path: Path) -> None:
    exe = Path(sys.executable).parent / "depin-gateway"
    r = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("depin-gateway ")
    assert cli("--version").stdout == r.stdout


def _config(tmp_path: Path, port: int = 1) -> Path:
    return write_config(tmp_path / "gw", port)


@pytest.mark.parametrize(
    ("break_it", "code", "message"),
    [
        ("missing-key", 3, "does not exist; create it with: depin-gateway keygen"),
        (
            "world-readable-key",
            3,
            "readable by group or others (mode 0644); fix it with: chmod 600",
        ),
        ("group-readable-key", 3, "(mode 0640); fix it with: chmod 600"),
        ("not-a-key", 3, "is not a PKCS#8 PEM private key"),
        ("corrupt-spool", 4, "is corrupt or not an SQLite database"),
        ("foreign-spool", 4, "belongs to did:key:"),
        ("remote-plain-text", 2, "uplink.url"),
        ("missing-password-env", 2, "uplink.password_env"),
    ],
)
def test_run_refuses_bad_setups_with_a_clear_message(
    tmp_path: Path, break_it: str, code: int, message: str
) -> None:
    cfg = _config(tmp_path)
    key = cfg.parent / "device.key"
    spool = cfg.parent / "spool.db"
    if break_it == "missing-key":
        key.unlink()
    elif break_it == "world-readable-key":
        key.chmod(0o644)
    elif break_it == "group-readable-key":
        key.chmod(0o640)
    elif break_it == "not-a-key":
        key.write_text("hello\n")
    elif break_it == "corrupt-spool":
        spool.write_bytes(os.urandom(8192))
    elif break_it == "foreign-spool":
        # A spool created under another device's key, e.g. a copied SD card image.
        other = identity.generate(tmp_path / "other.key")
        s = Spool(
            spool,
            identity=other,
            boot=bytes(16),
            max_size=1 << 20,
            batch_max_readings=10,
            batch_max_age=1,
            seal_ahead=1,
            modules=list,
        )
        s.open()
        s.close()
    elif break_it == "remote-plain-text":
        cfg.write_text(cfg.read_text().replace("mqtt://127.0.0.1", "mqtt://192.0.2.10"))
    elif break_it == "missing-password-env":
        cfg.write_text(
            cfg.read_text().replace(
                "[uplink]", '[uplink]\nusername = "u"\npassword_env = "DEPIN_TEST_UNSET_VARIABLE"'
            )
        )
    before = spool.read_bytes() if spool.exists() else None
    r = cli("run", "-c", str(cfg))
    assert r.returncode == code, r.stderr
    assert message in r.stderr
    assert "Traceback" not in r.stderr
    if before is not None:
        assert spool.read_bytes() == before, "the spool must never be replaced or repaired"


def test_remote_plain_text_error_names_the_fix(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    cfg.write_text(cfg.read_text().replace("mqtt://127.0.0.1", "mqtt://broker.example.org"))
    r = cli("config", "check", str(cfg))
    assert r.returncode == 2
    assert "mqtts://" in r.stderr and "insecure = true" in r.stderr
    assert f"{cfg}:" in r.stderr  # the place: file and line


def test_readings_arrive_as_batches_that_verify_accepts(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    collector = Collector(mosquitto.port)
    gw = GatewayProcess(write_config(tmp_path / "gw", mosquitto.port), tmp_path / "gw.log")
    try:
        gw.start()
        assert gw.wait_log("connected to", 20)
        time.sleep(3)
        assert gw.terminate() == 0
        # Everything the gateway reported durable was acknowledged before it exited; wait
        # until the subscriber holds it too (a loaded machine may deliver late).
        durable = len(gw.durable())
        assert collector.wait_for(
            lambda: (
                sum(len(b.records) for _, _, b in unique_batches(collector.batches())) >= durable
            ),
            20,
        )
    finally:
        collector.close()
        if gw.running():
            gw.kill()
    batches = collector.batches()
    assert_unbroken_chain(unique_batches(batches))
    out = tmp_path / "delivered"
    out.mkdir()
    for i, m in enumerate(batches):
        (out / f"{i:05d}.cose").write_bytes(m)
    births = [m.payload for m in collector.messages if m.topic.endswith("/birth")]
    (out / "birth.cose").write_bytes(births[0])
    did = identity.load(tmp_path / "gw" / "device.key").did
    r = cli("verify", "--allow", did, str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    n = len(batches)
    assert f"{n + 1} messages: {n} valid, 1 birth; 0 invalid" in r.stdout
    # Every durable reading is in a verified batch.
    n_records = sum(len(b.records) for _, _, b in unique_batches(batches))
    assert n_records >= len(gw.durable()) > 0

    # One flipped byte in one delivered batch: verify says so and exits non-zero.
    victim = out / "00001.cose"
    data = bytearray(victim.read_bytes())
    data[-70] ^= 0x01
    victim.write_bytes(bytes(data))
    r = cli("verify", "--allow", did, str(out))
    assert r.returncode == 1
    assert "00001.cose: bad-signature" in r.stdout


def test_verify_live_from_a_broker(tmp_path: Path, mosquitto: Mosquitto) -> None:
    gw = GatewayProcess(write_config(tmp_path / "gw", mosquitto.port), tmp_path / "gw.log")
    gw.start()
    try:
        assert gw.wait_log("connected to", 20)
        r = cli("verify", "--broker", mosquitto.url, "--seconds", "3")
    finally:
        gw.terminate()
    assert r.returncode == 0, r.stdout + r.stderr
    assert "valid" in r.stdout and "birth" in r.stdout


def test_every_command_has_help_text() -> None:
    import argparse

    from gateway.cli.main import build_parser

    def walk(p: argparse.ArgumentParser, path: str) -> list[str]:
        missing = []
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help for a in action._choices_actions}
                for name, sub in action.choices.items():
                    if not helps.get(name):
                        missing.append(f"{path} {name}")
                    missing += walk(sub, f"{path} {name}")
            elif action.dest != "help" and not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
        return missing

    assert walk(build_parser(), "depin-gateway") == []


def test_help_lists_every_command_without_loading_their_modules() -> None:
    """`depin-gateway --help` stands in stubs for the attestor, dashboard and firstboot parsers
    (their modules are imported only to run them): the text is the full parser's."""
    from gateway.cli.main import build_parser

    full = build_parser().format_help()
    assert build_parser(None, lazy=True).format_help() == full
    r = cli("--help")
    assert r.returncode == 0 and r.stdout == full
    for command in ("attestor", "dashboard", "firstboot"):
        assert f"\n    {command} " in full
        sub = cli(command, "--help")
        assert sub.returncode == 0 and f"usage: depin-gateway {command}" in sub.stdout
    sample = cli("attestor", "sample")
    assert sample.returncode == 0 and "[attestor]" in sample.stdout


def test_config_sample_piped_into_config_check_dash(tmp_path: Path) -> None:
    """The README's `config sample | config check -`: the sample checks from standard input, its
    relative paths taken from where the command runs; an error names `<stdin>`."""
    exe = Path(sys.executable).parent / "depin-gateway"
    sample = subprocess.run(
        [str(exe), "config", "sample"], capture_output=True, text=True, check=True
    ).stdout
    ok = subprocess.run(
        [str(exe), "config", "check", "-"],
        input=sample, capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert f'"{tmp_path / "spool.db"}"' in ok.stdout
    bad = subprocess.run(
        [str(exe), "config", "check", "-"],
        input=sample.replace('name = "sample-gateway"', 'nmae = "x"'),
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "<stdin>" in bad.stderr and "did you mean" in bad.stderr


def test_a_reader_that_stops_early_gets_no_traceback() -> None:
    exe = Path(sys.executable).parent / "depin-gateway"
    r = subprocess.run(
        # `true` has exited long before the command, which takes tens of ms to start, writes
        f"'{exe}' config sample | true",
        shell=True, capture_output=True, text=True, executable="/bin/bash",
    )  # fmt: skip
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
