"""Plug-ins are found as importlib.metadata finds entry points, without importing it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from gateway.core import plugins

GROUPS = (plugins.DRIVER_GROUP, plugins.MODULE_GROUP)


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    plugins._load.cache_clear()
    yield
    plugins._load.cache_clear()


def _dist(site: Path, folder: str, text: str) -> None:
    dist = site / folder
    dist.mkdir(parents=True)
    name = folder.partition("-")[0]
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1\n")
    (dist / "entry_points.txt").write_text(text)


def _standard(group: str) -> dict[str, str]:
    found = {}
    for ep in entry_points(group=group):
        found[ep.name] = ep.value
    return found


def test_the_installed_plug_ins_are_the_ones_importlib_metadata_finds() -> None:
    for group in GROUPS:
        assert plugins.entries(group) == _standard(group)
    assert "tflite" in plugins.modules() and "simulated" in plugins.drivers()
    assert plugins.module_class("ranges").__name__ == "RangeModule"


def test_third_party_distributions_agree_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, later = tmp_path / "first", tmp_path / "later"
    # Shadowed: the same distribution again later on sys.path does not count.
    _dist(first, "gw_extra-2.0.dist-info", "[depin_gateway.modules]\nextra = pkg.mod:Extra\n")
    _dist(later, "GW.Extra-1.0.dist-info", "[depin_gateway.modules]\nold = pkg.old:Old\n")
    # Comments, blank lines, extras, other groups; an egg-info directory.
    _dist(
        later,
        "other_dist-0.1.egg-info",
        "# a comment\n\n[console_scripts]\nx = y:z\n"
        "[depin_gateway.drivers]\nfancy = fancy.driver:Fancy [serial]\n",
    )
    monkeypatch.syspath_prepend(str(later))
    monkeypatch.syspath_prepend(str(first))
    for group in GROUPS:
        assert plugins.entries(group) == _standard(group)
    assert "extra" in plugins.modules() and "old" not in plugins.modules()
    assert "fancy" in plugins.drivers()


def test_no_importlib_metadata_on_the_way() -> None:
    code = (
        "import sys; from gateway.core import plugins; plugins.module_class('ranges'); "
        "print('importlib.metadata' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "False", r.stderr
