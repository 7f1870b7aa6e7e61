"""The direction of imports between the packages (pyproject's [tool.importlinter] contracts):
`lint-imports` keeps them on the tree as it is, and fails, naming the contract, on a tree with
one import going the wrong way."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def copy_tree(dest: Path) -> Path:
    for name in ("gateway", "drivers"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", dest / "pyproject.toml")
    return dest


def test_the_tree_keeps_every_contract() -> None:
    out = lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout


@pytest.mark.parametrize(
    ("module", "wrong_way", "contract"),
    [
        # the wire format reaching up into the device
        ("gateway/wire/dcbor.py", "import gateway.device.spool", "core at the bottom"),
        # the attestor needing device code to stand
        ("gateway/attestor/db.py", "import gateway.modules.chain", "stand on core, wire"),
        # a driver importing the configuration machinery
        ("drivers/sds011.py", "import gateway.config.settings", "nothing of the gateway"),
    ],
)
def test_a_wrong_way_import_breaks_its_contract(
    tmp_path: Path, module: str, wrong_way: str, contract: str
) -> None:
    root = copy_tree(tmp_path)
    path = root / module
    path.write_text(path.read_text() + f"\n{wrong_way}  # noqa\n")
    out = lint(root)
    assert out.returncode != 0
    broken = [line for line in out.stdout.splitlines() if line.endswith("BROKEN")]
    # (the wire format reaching into the device also takes the attestor with it, indirectly)
    assert any(contract in line for line in broken), out.stdout
    assert wrong_way.split()[-1] in out.stdout  # the report names the offending import
