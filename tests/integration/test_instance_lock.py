"""One gateway per spool and per key: a second one refuses at start and touches nothing.

Real processes hold the locks (a kill -9 must free them); the daemon is started the way a user
starts it, against a real mosquitto.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.core.errors import SpoolError
from gateway.wire import identity
from tests.brokers import Mosquitto
from tests.cli import cli
from tests.collector import Collector
from tests.gatewayproc import GatewayProcess, write_config
from tests.spools import make_spool, recs

ROOT = Path(__file__).resolve().parents[2]


def hold(lock_file: Path) -> subprocess.Popen[str]:
    """Another process holding `lock_file` the way a running gateway does."""
    code = (
        "import sys, time; from pathlib import Path; from gateway.device import lockfile; "
        "lockfile.lock(Path(sys.argv[1]), what='spool', lock_file=Path(sys.argv[1])); "
        "print('held', flush=True); time.sleep(600)"
    )
    p = subprocess.Popen(
        [sys.executable, "-c", code, str(lock_file)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert p.stdout is not None and p.stdout.readline() == "held\n"
    return p


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    p = hold(tmp_path / "spool.lock")
    try:
        yield p
    finally:
        p.kill()
        p.wait()


def test_second_spool_on_the_same_file_is_refused_naming_the_holder(tmp_path: Path) -> None:
    first = make_spool(tmp_path / "spool.db")
    with pytest.raises(
        SpoolError, match=rf"in use by another gateway process \(pid {os.getpid()}\)"
    ):
        make_spool(tmp_path / "spool.db")
    first.commit(recs(10), now=1e9)  # the first one is not disturbed
    first.close()
    make_spool(tmp_path / "spool.db").close()  # released at close


@pytest.mark.parametrize("link", ["file", "folder"])
def test_the_same_spool_through_a_symlink_is_refused(tmp_path: Path, link: str) -> None:
    """Two configurations naming one spool by two paths (a symlink to the file or to its
    folder) meet one lock: the second would otherwise sign the seqs the first signs."""
    (tmp_path / "a").mkdir()
    first = make_spool(tmp_path / "a" / "spool.db")
    if link == "file":
        (tmp_path / "b").mkdir()
        (tmp_path / "b" / "spool.db").symlink_to(tmp_path / "a" / "spool.db")
    else:
        (tmp_path / "b").symlink_to(tmp_path / "a")
    with pytest.raises(SpoolError, match="in use by another gateway process"):
        make_spool(tmp_path / "b" / "spool.db")
    first.close()
    second = make_spool(tmp_path / "b" / "spool.db")  # once free, its chain record is the same
    assert second.chain.path == tmp_path / "a" / "spool.chain"
    second.close()


def test_holder_in_another_process_is_named_and_its_death_frees_the_spool(
    tmp_path: Path, holder: subprocess.Popen[str]
) -> None:
    with pytest.raises(SpoolError) as e:
        make_spool(tmp_path / "spool.db")
    assert f"(pid {holder.pid})" in str(e.value)
    assert e.value.exit_code == 4
    assert not (tmp_path / "spool.db").exists()  # refused before SQLite created anything
    holder.send_signal(signal.SIGKILL)  # a power cut leaves no stale lock
    holder.wait()
    make_spool(tmp_path / "spool.db").close()


def test_one_key_two_spools_is_refused(tmp_path: Path) -> None:
    key = tmp_path / "device.key"
    identity.generate(key)
    key.chmod(0o400)  # read-only, as a systemd credential is
    first = make_spool(tmp_path / "a" / "spool.db", key_file=key)
    with pytest.raises(SpoolError, match=rf"device key {key} is in use by another gateway"):
        make_spool(tmp_path / "b" / "spool.db", key_file=key)
    assert not (tmp_path / "b" / "spool.db").exists()
    first.close()
    make_spool(tmp_path / "b" / "spool.db", key_file=key).close()
    assert key.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # never written


def test_a_refused_open_releases_what_it_took(tmp_path: Path) -> None:
    key = tmp_path / "device.key"
    identity.generate(key)
    first = make_spool(tmp_path / "a" / "spool.db", key_file=key)
    with pytest.raises(SpoolError):
        make_spool(tmp_path / "b" / "spool.db", key_file=key)
    first.close()
    # The refused one let go of its own spool's lock: another gateway may use that spool.
    make_spool(tmp_path / "b" / "spool.db").close()


def _spool_files(folder: Path) -> dict[str, bytes]:
    return {
        p.name: p.read_bytes()
        for p in sorted(folder.iterdir())
        if p.name.startswith("spool.") and p.suffix != ".lock"
    }


def test_second_daemon_exits_4_and_touches_nothing(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = write_config(tmp_path / "gw", mosquitto.port)
    first = GatewayProcess(cfg, tmp_path / "first.log")
    first.start()
    assert first.wait_log("connected to", 20)
    time.sleep(1)
    assert first.terminate() == 0
    before = _spool_files(cfg.parent)
    assert {"spool.db", "spool.chain"} <= set(before)
    collector = Collector(mosquitto.port)
    try:
        time.sleep(0.5)  # the retained messages of the first run arrive first
        seen = len(collector.messages)
        p = hold(cfg.parent / "spool.lock")  # a running gateway, as far as the lock goes
        try:
            r = cli("run", "-c", str(cfg), cwd=cfg.parent, timeout=30)
        finally:
            p.kill()
            p.wait()
        assert r.returncode == 4, r.stderr
        assert f"is in use by another gateway process (pid {p.pid})" in r.stderr
        assert "Traceback" not in r.stderr
        time.sleep(0.5)
        assert collector.messages[seen:] == []  # nothing published, nothing signed
        assert _spool_files(cfg.parent) == before
    finally:
        collector.close()


def test_second_daemon_beside_a_running_one(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = write_config(tmp_path / "gw", mosquitto.port)
    first = GatewayProcess(cfg, tmp_path / "first.log")
    first.start()
    try:
        assert first.wait_log("connected to", 20)
        r = cli("run", "-c", str(cfg), cwd=cfg.parent, timeout=30)
        assert r.returncode == 4
        assert first.proc is not None
        assert f"in use by another gateway process (pid {first.proc.pid})" in r.stderr
        assert "stop the other one first" in r.stderr.lower()
        assert first.running()
        assert first.terminate() == 0
    finally:
        if first.running():
            first.kill()


def test_second_daemon_on_the_same_key_with_its_own_spool_exits_4(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    first_cfg = write_config(tmp_path / "a", mosquitto.port)
    key = first_cfg.parent / "device.key"
    key.chmod(0o400)  # read-only, as a systemd credential is
    second_cfg = write_config(tmp_path / "b", mosquitto.port)
    second_cfg.write_text(
        second_cfg.read_text().replace('key_file = "device.key"', f'key_file = "{key}"')
    )
    first = GatewayProcess(first_cfg, tmp_path / "first.log")
    second = GatewayProcess(second_cfg, tmp_path / "second.log")
    first.start()
    try:
        assert first.wait_log("connected to", 20)
        second.start()
        # It stops at once, or gets as far as its spool (then it is too late: it would sign).
        deadline = time.monotonic() + 20
        while second.running() and not second.wait_log("spool ", 0.1):
            assert time.monotonic() < deadline
        assert second.proc is not None and second.proc.wait(5) == 4
        assert f"device key {key} is in use by another gateway process" in second.log.read_text()
        assert not (second_cfg.parent / "spool.db").exists()
        assert first.terminate() == 0
    finally:
        for gw in (first, second):
            if gw.running():
                gw.kill()
