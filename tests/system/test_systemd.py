"""The shipped units, checked the way systemd itself reads them (no systemd as PID 1 needed).

`systemd-analyze verify` exits 0 even on unknown keys, so its output must be empty.
`systemd-analyze security --offline=yes` scores the unit alone; the target is "OK", 1.5 or less.
The same units running for real are in tests/system/test_install.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.nspawn import CHECKOUT, UNITS

SYSTEMD = CHECKOUT / "systemd"
MAIN = SYSTEMD / "depin-gateway.service"
MAX_EXPOSURE = 1.5


def _analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing: apt-get install -y systemd")
        pytest.skip("systemd-analyze is missing (Debian package systemd)")
    return tool


def _settings(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key, []).append(value)
    return out


@pytest.fixture
def fake_root(tmp_path: Path) -> Path:
    """A root for `systemd-analyze verify --root=`: the host's own units (targets and the
    like), ours where install.sh puts them, and the executables they name."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    units = root / "usr/local/lib/systemd/system"
    units.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(SYSTEMD / unit, units / unit)
    exe = root / "opt/depin-gateway/venv/bin/depin-gateway"
    exe.parent.mkdir(parents=True)
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    return root


def test_units_verify_with_empty_output(fake_root: Path) -> None:
    res = subprocess.run(
        [_analyze(), "verify", f"--root={fake_root}", *UNITS],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.stdout + res.stderr == ""
    assert res.returncode == 0


def test_verify_would_catch_a_mistake(fake_root: Path) -> None:
    unit = fake_root / "usr/local/lib/systemd/system/depin-gateway.service"
    unit.write_text(unit.read_text().replace("WatchdogSec=", "WatchdogSecs="))
    res = subprocess.run(
        [_analyze(), "verify", f"--root={fake_root}", "depin-gateway.service"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "Unknown key 'WatchdogSecs'" in res.stderr


def test_exposure_is_ok(tmp_path: Path) -> None:
    unit = tmp_path / MAIN.name
    shutil.copy(MAIN, unit)
    res = subprocess.run(
        [_analyze(), "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    m = re.search(r"Overall exposure level for depin-gateway\.service: (\d+\.\d) (\w+)", res.stdout)
    assert m, res.stdout[-2000:]
    print(m[0])
    assert float(m[1]) <= MAX_EXPOSURE, res.stdout
    assert m[2] == "OK"
    # --threshold speaks tenths (0-100): the same limit, from systemd's own comparison
    limit = subprocess.run(
        [_analyze(), "security", "--offline=yes", f"--threshold={int(MAX_EXPOSURE * 10)}",
         str(unit)],
        capture_output=True,
        check=False,
        cwd=tmp_path,
    )  # fmt: skip
    assert limit.returncode == 0


def test_main_unit_settings() -> None:
    s = _settings(MAIN)
    one = {k: v[-1] for k, v in s.items()}
    assert one["Type"] == "notify"
    assert one["NotifyAccess"] == "main"
    assert one["WatchdogSec"] == "30"
    assert one["Restart"] == "on-failure"
    assert one["User"] == "depin-gateway"
    assert one["SupplementaryGroups"] == "dialout i2c"
    for key in ("StateDirectory", "ConfigurationDirectory", "RuntimeDirectory"):
        assert one[key] == "depin-gateway"
    assert one["UMask"] == "0077"
    assert one["LoadCredential"] == "device.key:/etc/depin-gateway/device.key"
    assert "--key %d/device.key" in one["ExecStart"]
    assert one["DevicePolicy"] == "closed"
    assert sorted(s["DeviceAllow"]) == sorted(
        f"char-{d} rw" for d in ("ttyUSB", "ttyACM", "ttyAMA", "ttyS", "i2c")
    )
    # kept off on purpose (comments in the unit say why)
    assert "PrivateDevices" not in s
    assert "ProcSubset" not in s
    text = MAIN.read_text()
    assert "PrivateDevices= stays off" in text and "ProcSubset=pid stays off" in text
    # AF_UNIX: sd_notify and the journal
    assert "AF_UNIX" in one["RestrictAddressFamilies"].split()
    # offline, systemd-time-wait-sync would hold the gateway forever
    assert "time-sync.target" not in "".join(s.get("After", []))


def test_the_other_units_and_files_are_shipped() -> None:
    firstboot = _settings(SYSTEMD / "depin-gateway-firstboot.service")
    assert firstboot["Before"] == ["depin-gateway.service"]
    assert firstboot["ConditionPathExists"] == ["/boot/firmware/depin-gateway.toml"]
    keygen = _settings(SYSTEMD / "depin-gateway-keygen.service")
    assert keygen["ConditionPathExists"] == ["!/etc/depin-gateway/device.key"]
    modules = (SYSTEMD / "depin-gateway.modules-load.conf").read_text().split("\n")
    assert {"i2c-dev", "usbserial", "cdc_acm"} <= {m for m in modules if m and m[0] != "#"}
    rules = (CHECKOUT / "udev/99-depin-gateway.rules").read_text()
    assert 'ATTRS{idVendor}=="1a86", ATTRS{idProduct}=="7523", SYMLINK+="depin-sds011"' in rules
    assert "depin-pms5003" in rules


def test_udev_rules_are_well_formed() -> None:
    pair = re.compile(r'^([A-Z_]+(\{[^}]+\})?)(==|!=|\+=|=|:=)"[^"]*"$')
    for n, line in enumerate((CHECKOUT / "udev/99-depin-gateway.rules").read_text().split("\n")):
        body = line.lstrip("#") if line.startswith("#SUBSYSTEM") else line
        if not body or body.startswith("#"):
            continue
        for item in body.split(", "):
            assert pair.match(item), f"line {n + 1}: {item!r}"
