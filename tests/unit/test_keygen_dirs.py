"""`depin-gateway keygen` into a directory that does not exist yet: the directories it creates
are the owner's alone whatever the umask, and the ones that existed keep their mode."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path


def keygen(key: Path, umask: int) -> subprocess.CompletedProcess[str]:
    """The real command, in a new interpreter started with `umask`."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", "keygen", "--key", str(key)],
        capture_output=True,
        text=True,
        timeout=60,
        umask=umask,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        stdin=subprocess.DEVNULL,
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_keygen_creates_missing_directories_0700_under_umask_022(tmp_path: Path) -> None:
    existing = tmp_path / "etc"
    existing.mkdir()
    existing.chmod(0o755)
    key = existing / "depin-gateway" / "keys" / "device.key"

    r = keygen(key, 0o022)

    assert r.returncode == 0, r.stderr
    assert "device id: z6Mk" in r.stdout
    assert mode(existing / "depin-gateway") == 0o700
    assert mode(existing / "depin-gateway" / "keys") == 0o700
    assert mode(key) == 0o600
    # a directory the owner had already keeps the mode the owner gave it
    assert mode(existing) == 0o755


def test_keygen_into_an_existing_directory_leaves_its_mode(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o750)

    r = keygen(shared / "device.key", 0o022)

    assert r.returncode == 0, r.stderr
    assert mode(shared) == 0o750
    assert mode(shared / "device.key") == 0o600


def test_a_umask_without_owner_bits_still_gives_a_usable_private_directory(
    tmp_path: Path,
) -> None:
    # umask 0277 would leave a new directory r-x for the owner only: the key could not be
    # written into it
    key = tmp_path / "new" / "device.key"

    r = keygen(key, 0o277)

    assert r.returncode == 0, r.stderr
    assert mode(tmp_path / "new") == 0o700
    assert mode(key) & 0o077 == 0
