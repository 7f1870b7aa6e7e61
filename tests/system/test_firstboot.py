"""A configuration left on the boot partition: taken over when good, reported when bad."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml  # type: ignore[import-untyped]

from gateway.cli import firstboot
from gateway.config import settings as config
from tests.nspawn import CHECKOUT

USER_DATA = CHECKOUT / "examples/cloud-init/user-data"

GOOD = """\
[device]
name = "from-the-card"
key_file = "/etc/depin-gateway/device.key"

[spool]
path = "/var/lib/depin-gateway/spool.db"

[[sensor]]
id = "climate"
driver = "simulated"
interval = "10 s"
kind = "climate"
"""

OLD = GOOD.replace("from-the-card", "the-old-one")
# line 11: a misspelt key; line 3: a bool where a path goes
BAD = GOOD.replace('interval = "10 s"', 'intervall = "10 s"').replace(
    'key_file = "/etc/depin-gateway/device.key"', "key_file = true"
)


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    boot, etc = tmp_path / "boot", tmp_path / "etc"
    boot.mkdir()
    etc.mkdir()
    (etc / "gateway.toml").write_text(OLD)
    return boot, etc


def test_nothing_to_do_without_a_boot_copy(dirs: tuple[Path, Path]) -> None:
    boot, etc = dirs
    assert firstboot.take_over(boot, etc) == firstboot.Outcome("none")
    assert (etc / "gateway.toml").read_text() == OLD
    assert sorted(p.name for p in boot.iterdir()) == []


def test_a_good_config_is_taken_over(dirs: tuple[Path, Path]) -> None:
    boot, etc = dirs
    (boot / "depin-gateway.toml").write_text(GOOD)
    (boot / "depin-gateway-errors.txt").write_text("from an earlier, bad attempt")
    assert firstboot.take_over(boot, etc).action == "applied"
    assert (etc / "gateway.toml").read_text() == GOOD
    assert (etc / "gateway.toml.previous").read_text() == OLD
    assert (etc / "gateway.toml").stat().st_mode & 0o777 == 0o640
    assert sorted(p.name for p in boot.iterdir()) == ["depin-gateway.toml.applied"]
    assert sorted(p.name for p in etc.iterdir()) == ["gateway.toml", "gateway.toml.previous"]
    assert config.load(etc / "gateway.toml").device.name == "from-the-card"
    # again: nothing left to take over, nothing changes
    assert firstboot.take_over(boot, etc).action == "none"
    assert (etc / "gateway.toml").read_text() == GOOD


def test_the_same_config_again_is_only_marked_applied(dirs: tuple[Path, Path]) -> None:
    boot, etc = dirs
    (boot / "depin-gateway.toml").write_text(OLD)
    assert firstboot.take_over(boot, etc).action == "unchanged"
    assert not (etc / "gateway.toml.previous").exists()
    assert (boot / "depin-gateway.toml.applied").read_text() == OLD


def test_a_first_config_needs_no_previous_one(tmp_path: Path) -> None:
    boot, etc = tmp_path / "boot", tmp_path / "etc" / "depin-gateway"
    boot.mkdir()
    (boot / "depin-gateway.toml").write_text(GOOD)
    assert firstboot.take_over(boot, etc).action == "applied"
    assert (etc / "gateway.toml").read_text() == GOOD


def test_a_bad_config_is_reported_and_the_old_one_kept(dirs: tuple[Path, Path]) -> None:
    boot, etc = dirs
    (boot / "depin-gateway.toml").write_text(BAD)
    outcome = firstboot.take_over(boot, etc)
    assert outcome.action == "rejected" and outcome.exit_code == 2
    assert (etc / "gateway.toml").read_text() == OLD
    assert not (etc / "gateway.toml.previous").exists()
    assert (boot / "depin-gateway.toml").read_text() == BAD  # left for the owner to fix
    raw = (boot / "depin-gateway-errors.txt").read_bytes()
    text = raw.decode()
    assert "\r\n" in text and "\n" not in text.replace("\r\n", "")
    assert "was NOT applied" in text
    assert "depin-gateway.toml:3: device.key_file:" in text
    assert "depin-gateway.toml:11: sensor[0].intervall: unknown key; did you mean 'interval'?" in (
        text
    )
    assert (
        outcome.problems == [line for line in text.split("\r\n") if line.startswith("depin-")][-2:]
    )
    # again: the same verdict, the errors file untouched
    before = (boot / "depin-gateway-errors.txt").stat().st_mtime_ns
    assert firstboot.take_over(boot, etc) == outcome
    assert (boot / "depin-gateway-errors.txt").stat().st_mtime_ns == before
    # fixed on the PC: taken over, the errors file gone
    (boot / "depin-gateway.toml").write_text(GOOD)
    assert firstboot.take_over(boot, etc).action == "applied"
    assert not (boot / "depin-gateway-errors.txt").exists()


def test_syntax_errors_and_odd_encodings(dirs: tuple[Path, Path]) -> None:
    boot, etc = dirs
    (boot / "depin-gateway.toml").write_text('[device]\nname = "x\n')
    outcome = firstboot.take_over(boot, etc)
    assert outcome.action == "rejected"
    assert outcome.problems[0].startswith("depin-gateway.toml:2: TOML syntax error")
    (boot / "depin-gateway.toml").write_bytes(b'[device]\nname = "caf\xe9"\n')
    outcome = firstboot.take_over(boot, etc)
    assert outcome.problems == [
        "depin-gateway.toml:2: not valid UTF-8 (byte 20); save the file as UTF-8"
    ]
    # a byte-order mark and CRLF line ends, as some Windows editors save
    (boot / "depin-gateway.toml").write_bytes(b"\xef\xbb\xbf" + GOOD.replace("\n", "\r\n").encode())
    assert firstboot.take_over(boot, etc).action == "applied"
    assert config.load(etc / "gateway.toml").device.name == "from-the-card"
    assert (etc / "gateway.toml").read_bytes()[:3] != b"\xef\xbb\xbf"


def test_relative_paths_are_taken_from_the_config_directory(dirs: tuple[Path, Path]) -> None:
    boot, etc = dirs
    (boot / "depin-gateway.toml").write_text(GOOD.replace("/var/lib/depin-gateway/", ""))
    assert firstboot.take_over(boot, etc).action == "applied"
    assert config.load(etc / "gateway.toml").spool.path == etc / "spool.db"


def test_main_prints_for_the_journal(
    dirs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    boot, etc = dirs
    (boot / "depin-gateway.toml").write_text(BAD)
    assert firstboot.main(boot, etc) == 2
    err = capsys.readouterr().err
    assert "depin-gateway.toml:11: sensor[0].intervall" in err
    assert f"{boot}/depin-gateway.toml NOT applied (2 problem(s)" in err
    (boot / "depin-gateway.toml").write_text(GOOD)
    assert firstboot.main(boot, etc) == 0
    assert "checked and installed as" in capsys.readouterr().out


def test_add_parser_wires_the_command() -> None:
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    firstboot.add_parser(sub)
    args = parser.parse_args(["firstboot", "--boot", "/b", "--etc", "/e"])
    assert (args.boot, args.etc, args.fn) == ("/b", "/e", firstboot.cmd_firstboot)
    args = parser.parse_args(["firstboot"])
    assert (args.boot, args.etc) == ("/boot/firmware", "/etc/depin-gateway")


# --- the cloud-init example ------------------------------------------------------------------


def test_cloud_init_example_validates() -> None:
    tool = shutil.which("cloud-init")
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("cloud-init is missing: apt-get install -y cloud-init")
        pytest.skip("cloud-init is missing (Debian package cloud-init)")
    res = subprocess.run(
        [tool, "schema", "--config-file", str(USER_DATA)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "Valid cloud-config" in res.stdout


def test_cloud_init_example_carries_a_good_config(tmp_path: Path) -> None:
    doc = yaml.safe_load(USER_DATA.read_text())
    assert USER_DATA.read_text().startswith("#cloud-config\n")
    (written,) = [f for f in doc["write_files"] if f["path"].endswith("depin-gateway.toml")]
    assert written["path"] == "/boot/firmware/depin-gateway.toml"
    assert firstboot.check(written["content"], source="user-data", etc=tmp_path) == []
    script = doc["runcmd"][0][2]
    assert "scripts/install.sh" in script
    assert doc["power_state"]["mode"] == "reboot"
