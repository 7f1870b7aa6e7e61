"""Every registered plug-in keeps the plug-in contract (gateway/core/manifest.py).

For each entry point of both groups: it names a typed manifest; the sample the manifest names
loads through the real config loader as one table of that plug-in; the README it names lists
every option its config declares, and no other, and shows the sample. Then what rests on the
manifests: the chips' facts the rule modules judge by, a start that reads every driver's
manifest without importing any driver, and entry points that still name a class.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.base import SensorDriver
from gateway.config import render
from gateway.config import settings as config
from gateway.core import plugins
from gateway.core.fields import Field
from gateway.core.manifest import Manifest, Quantity
from gateway.modules.base import DetectionModule
from gateway.modules.chips import chip_facts

GROUPS = (plugins.DRIVER_GROUP, plugins.MODULE_GROUP)

#: Plug-ins whose manifest is still being written: their entry point names the class, so their
#: manifest is derived and the contract's checks fail, as expected (strict: the day they pass,
#: the entry is stale). Once the module defines MANIFEST, name it in pyproject.toml's entry
#: point and drop the entry here: test_pending_plug_ins_have_no_manifest_yet says when. None
#: now; an entry reads `"name": "why it has no manifest yet"`, for modules only.

DEVICE = '[device]\nname = "contract"\nkey_file = "device.key"\n'
SENSOR = '\n[[sensor]]\nid = "climate"\ndriver = "simulated"\n'


def _entries() -> Iterator[object]:
    for group in GROUPS:
        kind = plugins.KIND[group]
        for name in plugins.names(group):
            yield pytest.param(group, name, id=f"{kind}-{name}")


ENTRIES = list(_entries())


def _options_listed(readme: str) -> list[str]:
    """The options a README lists: the first cells of its table headed `| Option |`."""
    listed: list[str] = []
    tables = 0
    rows = iter(readme.splitlines())
    for line in rows:
        if not re.match(r"\|\s*Option\s*\|", line):
            continue
        tables += 1
        next(rows, None)  # the |---| row
        for row in rows:
            if not row.startswith("|"):
                break
            m = re.match(r"\|\s*`([^`]+)`\s*\|", row)
            assert m, f"an option row names no `option` first: {row}"
            listed.append(m[1])
    assert tables <= 1, "the README has more than one `| Option |` table"
    return listed


@pytest.mark.parametrize(("group", "name"), ENTRIES)
def test_the_entry_point_names_a_typed_manifest(group: str, name: str) -> None:
    manifest = plugins.manifest(group, name)
    assert isinstance(manifest, Manifest)
    assert not manifest.derived, f"the entry point of {name} names a class, not its manifest"
    assert (manifest.kind, manifest.name) == (plugins.KIND[group], name)
    cls = manifest.factory
    assert issubclass(cls, SensorDriver if manifest.kind == "driver" else DetectionModule)
    assert cls.name == name, "the class says the name the plug-in is registered under"
    assert manifest.config is cls.CONFIG
    assert all(isinstance(k, str) and isinstance(f, Field) for k, f in manifest.config.items())
    if manifest.kind == "driver":
        assert manifest.quantities, "a driver says what it reports"
        assert all(isinstance(q, Quantity) for q in manifest.quantities.values())
    else:
        assert not manifest.quantities
    # shipped: the wheel's package data takes every *.sample.toml beside the code
    assert manifest.sample is not None and re.fullmatch(r"[\w-]+\.sample\.toml", manifest.sample)
    assert manifest.readme is not None


@pytest.mark.parametrize(("group", "name"), ENTRIES)
def test_its_sample_loads_through_the_config_loader(group: str, name: str, tmp_path: Path) -> None:
    sample = plugins.manifest(group, name).sample_text()
    if group == plugins.DRIVER_GROUP:
        cfg = config.loads(DEVICE + "\n" + sample, base_dir=tmp_path)
        assert [s.driver for s in cfg.sensors] == [name]
    else:
        cfg = config.loads(DEVICE + SENSOR + "\n" + sample, base_dir=tmp_path)
        assert [m.kind for m in cfg.modules] == [name]


@pytest.mark.parametrize(("group", "name"), ENTRIES)
def test_its_readme_lists_every_option_and_shows_the_sample(group: str, name: str) -> None:
    manifest = plugins.manifest(group, name)
    path = manifest.readme_path()
    assert path is not None and path.is_file(), f"{name}: no README at {path and path.resolve()}"
    readme = path.read_text(encoding="utf-8")
    listed = _options_listed(readme)
    declared = list(manifest.config)
    assert len(listed) == len(set(listed)), f"{path} lists an option twice: {listed}"
    assert sorted(listed) == sorted(declared), (
        f"{path}: missing {sorted(set(declared) - set(listed))}, "
        f"not options of {name}: {sorted(set(listed) - set(declared))}"
    )
    assert f"```toml\n{manifest.sample_text()}```" in readme, f"{path} does not show the sample"


def test_the_sample_is_built_from_the_plug_ins_samples() -> None:
    text = config.sample_text()
    for kind, name in render.SAMPLE_PLUGINS:
        manifest = plugins.driver(name) if kind == "driver" else plugins.module(name)
        assert f"\n{manifest.sample_text()}" in text, name
    built = (Path(render.__file__).parents[1] / "sample.toml").read_text(encoding="utf-8")
    assert text == built, "gateway/sample.toml is stale: depin-gateway config sample > it"


def test_the_rules_judge_by_the_chips_facts_as_before() -> None:
    """The facts moved from the modules into the drivers' manifests; the tables the rules get
    from them are the ones they had (a change here changes verdicts: a module version bump)."""
    facts = chip_facts()
    assert dict(facts.resolution) == {
        "temperature": 0.01,
        "humidity": 0.01,
        "pressure": 0.2,
        "co2": 1.0,
        "pm1": 1.0,
        "pm2_5": 0.1,
        "pm10": 0.1,
    }
    assert dict(facts.range) == {
        "temperature": (-40.0, 85.0),
        "humidity": (0.0, 100.0),
        "pressure": (30_000.0, 110_000.0),
        "pm1": (0.0, 1000.0),
        "pm2_5": (0.0, 1000.0),
        "pm10": (0.0, 1000.0),
        "co2": (0.0, 40_000.0),
    }


def test_every_driver_manifest_loads_without_driver_code() -> None:
    """A start reads every driver's manifest (the chips' facts): none of their code, and no bus
    library, may come with them."""
    code = (
        "import sys\n"
        "from gateway.core import plugins\n"
        "from gateway.modules.chips import chip_facts\n"
        "assert all(not plugins.driver(n).derived for n in plugins.drivers())\n"
        "assert chip_facts().resolution\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('drivers', 'serial', "
        "'smbus2')))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["['drivers',", "'drivers.manifests']"]


def _dist(site: Path, entry_points: str, modules: dict[str, str]) -> None:
    dist = site / "gw_contract_test-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gw-contract-test\nVersion: 1\n")
    (dist / "entry_points.txt").write_text(entry_points)
    for name, text in modules.items():
        (site / f"{name}.py").write_text(text)


# Written against the contract and the import paths of before the packages were cut by what
# they hold (gateway.schema, gateway.errors, gateway.reading): they keep working.
OLD_STYLE = """\
from gateway.schema import Field
from gateway.errors import SensorError
from drivers.base import Measurement, SensorDriver

class Old(SensorDriver):
    name = "old"
    blocking = False
    CONFIG = {"gain": Field("int", "gain", default=1)}
    quantities = {"temperature": "Cel"}
    def read(self, now):
        if now < 0:
            raise SensorError("never")
        return [Measurement("temperature", 300.0)]
"""

OLD_MODULE = """\
from gateway.modules.base import NO_OPINION, DetectionModule
from gateway.reading import Reading
from gateway.schema import Field

class Quiet(DetectionModule):
    name = "quiet"
    version = "0.1"
    CONFIG = {"level": Field("int", "level", default=0)}
    def judge(self, readings: list[Reading]):
        return [NO_OPINION for _ in readings]
"""


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    site = tmp_path / "site"
    _dist(
        site,
        "[depin_gateway.drivers]\nold = gw_contract_old:Old\nbroken = gw_contract_broken:X\n"
        "[depin_gateway.modules]\nquiet = gw_contract_quiet:Quiet\n",
        {
            "gw_contract_old": OLD_STYLE,
            "gw_contract_broken": "raise ImportError('libfoo')\n",
            "gw_contract_quiet": OLD_MODULE,
        },
    )
    monkeypatch.syspath_prepend(str(site))
    plugins._load.cache_clear()
    yield
    plugins._load.cache_clear()
    for name in ("gw_contract_old", "gw_contract_broken", "gw_contract_quiet"):
        sys.modules.pop(name, None)


@pytest.mark.usefixtures("third_party")
def test_an_entry_point_naming_a_class_still_loads(tmp_path: Path) -> None:
    manifest = plugins.driver("old")
    assert manifest.derived and (manifest.kind, manifest.name) == ("driver", "old")
    assert plugins.driver_class("old") is manifest.factory
    assert manifest.config is manifest.factory.CONFIG
    assert not manifest.quantities and manifest.sample is None and manifest.readme is None
    cfg = config.loads(
        DEVICE + '\n[[sensor]]\nid = "x"\ndriver = "old"\ngain = 3\n'
        '\n[[module]]\nid = "q"\nkind = "quiet"\nlevel = 2\n',
        base_dir=tmp_path,
    )
    assert cfg.sensors[0].options == {"gain": 3}
    assert cfg.modules[0].options == {"level": 2}
    assert plugins.module("quiet").derived
    # it states no chip facts, and one that fails to load takes nothing from the others
    assert chip_facts().range["temperature"] == (-40.0, 85.0)
    with pytest.raises(ImportError, match="libfoo"):
        plugins.driver("broken")


def test_a_manifest_under_another_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    entries = dict(plugins.entries(plugins.DRIVER_GROUP), bme="drivers.manifests:BME280")
    monkeypatch.setitem(plugins._load(), plugins.DRIVER_GROUP, entries)
    with pytest.raises(ValueError, match="names the manifest of driver 'bme280'"):
        plugins.driver("bme")


def test_a_module_judging_by_the_chips_facts_names_them_in_its_digest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another installed driver can widen a range or refine a resolution: the batches' key 8
    then names a different digest for the modules judging by them, not the same one."""
    from gateway.modules import chips
    from gateway.modules.gaps import DropoutModule
    from gateway.modules.ranges import RangeModule

    ranges, dropout = (
        RangeModule(module_id="r", options={}),
        DropoutModule(module_id="d", options={}),
    )
    before = ranges.digest(), dropout.digest()
    facts = chip_facts()
    wider = chips.ChipFacts(facts.resolution, {**facts.range, "temperature": (-55.0, 150.0)})
    monkeypatch.setattr(chips, "chip_facts", lambda: wider)
    assert ranges.digest() != before[0]
    assert dropout.digest() == before[1]  # it judges by none of them
