"""`depin-gateway probe` finds every emulated chip and prints configuration that checks."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from drivers.emulators.pms5003 import PMS5003Chip
from drivers.emulators.pty import PtyServer
from drivers.emulators.sds011 import SDS011Chip


def test_probe_finds_each_emulated_chip_and_its_config_checks(tmp_path: Path) -> None:
    sds = PtyServer(SDS011Chip(seed=1), link=tmp_path / "ttyUSB0").start()
    pms = PtyServer(PMS5003Chip(seed=2), link=tmp_path / "ttyAMA0").start()
    try:
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway",
                "probe",
                "--i2c-bus",
                "emulated",
                "--serial",
                sds.path,
                "--serial",
                pms.path,
                "--serial",
                str(tmp_path / "nothing"),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=os.environ.copy(),
        )
    finally:
        sds.stop()
        pms.stop()
    assert r.returncode == 0, r.stderr
    drivers = [line.split('"')[1] for line in r.stdout.splitlines() if line.startswith("driver")]
    assert sorted(drivers) == ["bme280", "pms5003", "scd4x", "sds011", "sht4x"], r.stderr
    assert "skipped:" in r.stderr and "nothing" in r.stderr  # a missing port is said, not fatal
    cfg = tmp_path / "found.toml"
    cfg.write_text('[device]\nname = "probed"\n\n' + r.stdout)
    check = subprocess.run(
        [sys.executable, "-m", "gateway", "config", "check", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stderr
