"""A checkout is self-contained: nothing reads data from beside or outside it, the data it ships
carries its licences, and the quick-start scripts pass shellcheck."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# Where code and tests live; docs may well talk about other places.
CODE = ("tests", "models", "bench", "scripts", "gateway", "drivers")
# A path into a sibling folder or a particular machine works on one machine only; the data the
# project needs is in models/data.
FORBIDDEN = ("../shared", "/work/", "shared/data")
# the quick-start scripts, the Pi's install and uninstall, the smoke tests and CI's entry
SCRIPTS = (
    "scripts/test",
    "scripts/install.sh",
    "scripts/uninstall.sh",
    "scripts/demo",
    "scripts/setup-venv",
    "scripts/smoke-wheel",
    "scripts/arm64-smoke",
    ".ci/run",
)


def _text_files() -> list[Path]:
    out = []
    for top in CODE:
        for path in sorted((ROOT / top).rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            if path == Path(__file__).resolve():  # names the forbidden strings to look for them
                continue
            data = path.read_bytes()
            if b"\0" not in data[:8192]:  # not a binary file (a model, a test vector)
                out.append(path)
    return out


def test_no_file_reads_from_beside_or_outside_the_checkout() -> None:
    files = _text_files()
    assert any(p.name == "datasets.py" for p in files)  # the walk does see the code
    found = [
        f"{p.relative_to(ROOT)}:{n}: {s!r}"
        for p in files
        for n, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
        for s in FORBIDDEN
        if s in line
    ]
    assert not found, "\n".join(found)


def test_the_shipped_data_is_there_with_its_licences() -> None:
    data = ROOT / "models" / "data"
    readme = (data / "README.md").read_text(encoding="utf-8")
    licences = {
        "nab/LICENSE.txt": "MIT",
        "weather/LICENSE-723170TYA.txt": "BSD 3-Clause",
        "weather/NOTICE-co2.txt": "public domain",
    }
    for name, words in licences.items():
        assert words in (data / name).read_text(encoding="utf-8"), name
        assert name in readme, name
    for name in ("weather/723170TYA.CSV", "weather/co2.csv", "nab/labels/combined_windows.json"):
        assert (data / name).stat().st_size > 10_000, name
        assert name in readme, name
    assert len(list((data / "nab" / "realKnownCause").glob("*.csv"))) == 7
    assert "Apache License" in (ROOT / "LICENSE").read_text(encoding="utf-8")


@pytest.mark.parametrize("script", SCRIPTS)
def test_scripts_are_executable_and_pass_shellcheck(script: str) -> None:
    path = ROOT / script
    assert path.stat().st_mode & stat.S_IXUSR
    tool = shutil.which("shellcheck")
    if tool is None:
        if os.environ.get("CI") == "true":
            pytest.fail("shellcheck is missing: apt-get install -y shellcheck")
        pytest.skip("shellcheck is missing (Debian package shellcheck)")
    res = subprocess.run([tool, str(path)], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout
