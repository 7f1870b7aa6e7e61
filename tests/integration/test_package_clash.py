"""A distribution named `drivers` in the gateway's environment: the gateway says so at start,
naming the foreign package and the fix, instead of failing later on a strange ImportError."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str, cwd: Path, path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ}
    env["PYTHONPATH"] = os.pathsep.join(str(p) for p in (path, ROOT) if p is not None)
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        env=env,
        cwd=cwd,  # not the checkout: `python -m` puts the working directory first on sys.path
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_a_foreign_drivers_package_fails_loudly_at_start(tmp_path: Path) -> None:
    foreign = tmp_path / "drivers"
    foreign.mkdir()
    (foreign / "__init__.py").write_text('"""Somebody else\'s drivers."""\n')
    out = run("config", "sample", cwd=tmp_path, path=tmp_path)
    assert out.returncode == 1
    assert out.stdout == ""
    assert str(foreign / "__init__.py") in out.stderr
    assert "is not depin-gateway's" in out.stderr
    assert "own virtual environment" in out.stderr
    assert "Traceback" not in out.stderr


def test_our_own_drivers_pass(tmp_path: Path) -> None:
    out = run("config", "sample", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("# depin-gateway sample configuration.")
