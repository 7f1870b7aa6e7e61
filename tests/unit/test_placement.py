"""Sensors in different places: the plausibility module compares only sensors of one placement.

A gateway with an indoor CO2 sensor and an outdoor climate sensor reads two different airs;
before placements, every one of their correct readings could be called implausible. These tests
drive the demo's own sensors (real drivers on the emulated chips, simulated time) and a
realistic indoor/outdoor pair, and check both halves of the promise: no implausible flag on
correct readings, and a real disagreement within one placement is still caught.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

from drivers.emulators import i2c
from drivers.emulators.i2c import VirtualClock
from drivers.simulated import SimulatedSensor
from gateway.cli import demo
from gateway.config import settings as config
from gateway.core import plugins
from gateway.core.health import Health
from gateway.core.reading import Reading
from gateway.modules.chain import ModuleChain
from gateway.modules.plausibility import PlausibilityModule

MINUTE = 60.0
# 2024-01-15 00:00 UTC: a winter day, when indoor and outdoor air differ the most
WINTER = 1_705_276_800.0


@pytest.fixture
def emulated_bus() -> Iterator[None]:
    """The emulated I2C bus is process-wide: leave it as other tests expect it."""
    yield
    i2c.reset()


def implausible(readings: Sequence[Reading]) -> list[str]:
    return [f"{r.name}={r.value}" for r in readings if "implausible" in r.flags]


def module(placements: Mapping[str, str] | None = None, **options: Any) -> PlausibilityModule:
    opts = dict(options)
    if placements is not None:
        opts["placements"] = dict(placements)
    return PlausibilityModule(module_id="p", options=opts)


def judge(mod: PlausibilityModule, sensor: str, t: float, **values: float) -> list[Reading]:
    """One read of `sensor` at `t`: its quantities, judged together as the chain does."""
    readings = [Reading(sensor, q, "", v, t, True) for q, v in values.items()]
    for r, (score, flags) in zip(readings, mod.judge(readings), strict=True):
        r.score, r.flags = score, list(flags)
    return readings


# --------------------------------------------------------------------------- the demo's sensors


def run_sensors(text: str, *, hours: float, step: float) -> list[Reading]:
    """Every sensor of the configuration `text` read by its real driver every `step` seconds of
    simulated time from a winter midnight, the I2C chips emulated in one indoor air, the
    readings judged by the configuration's module chain, as the daemon does. The SDS011 is left
    out: it needs a pseudo-terminal in real time, and PM is only ever compared within one
    sensor."""
    clock = VirtualClock(start=WINTER)
    i2c.reset(clock=clock, seed=1)
    cfg = config.loads(text)
    chain = ModuleChain.from_config(cfg.modules, health=Health())
    drivers = []
    for sc in cfg.sensors:
        if sc.driver == "sds011":
            continue
        driver = plugins.driver_class(sc.driver)(sensor_id=sc.id, options=sc.options)
        driver.open()
        drivers.append((sc, driver))
    out: list[Reading] = []
    for _ in range(int(hours * 3600 / step)):
        for sc, driver in drivers:
            t = clock.wall()
            units = dict(driver.quantities)
            readings = [
                Reading(sc.id, m.quantity, units.get(m.quantity, ""), m.value, t, True, 0.0,
                        list(m.flags))
                for m in driver.read(t)
            ]  # fmt: skip
            chain.judge(readings)
            out += readings
        clock.advance(step)
    return out


def without_placements(text: str) -> str:
    stripped = re.sub(r'^placement = ".*"\n', "", text, flags=re.M)
    assert stripped != text
    return stripped


@pytest.mark.usefixtures("emulated_bus")
@pytest.mark.parametrize("chips", [True, False], ids=["emulated-chips", "simulated"])
def test_the_demo_flags_no_correct_reading(chips: bool) -> None:
    """A day of the demo's sensors: the outdoor sensor's injected range faults are the only
    readings the plausibility module may call implausible. Without the placements the same
    correct readings were flagged by the hundred (the indoor chips against the outdoor sensor),
    so the placements are what makes the difference."""
    text = demo.config_text(
        "mqtt://127.0.0.1:1883", seed=1, pm_port="/dev/ttyUSB0" if chips else None
    )
    readings = run_sensors(text, hours=24, step=30.0)
    assert {r.sensor for r in readings} >= {"outdoor", "co2"}
    correct = [r for r in readings if "range" not in r.flags]
    faults = [r for r in readings if "range" in r.flags]
    assert faults, "the injected faults are there"
    assert implausible(correct) == []

    before = run_sensors(without_placements(text), hours=24, step=30.0)  # the same day again
    flagged = implausible([r for r in before if "range" not in r.flags])
    assert len(flagged) > 100, flagged


# --------------------------------------------------------------------------- an indoor/outdoor pair


def test_an_indoor_co2_sensor_and_an_outdoor_climate_sensor_are_not_compared() -> None:
    """An SCD41 in a heated living room and a BME280 outside, both reading correctly for a week
    of winter (seeded, daily cycles and weather as in real records): nothing is implausible.
    Without placements the module compares their temperatures and humidities and flags them."""
    indoor = SimulatedSensor(sensor_id="co2", options={"kind": "co2", "site": "indoor", "seed": 3})
    outdoor = SimulatedSensor(
        sensor_id="garden", options={"kind": "climate", "site": "outdoor", "seed": 3}
    )
    placed = module({"co2": "indoor", "garden": "outdoor"}, altitude=0.0)
    unplaced = module(altitude=0.0)
    flagged: dict[str, list[str]] = {"placed": [], "unplaced": []}
    for i in range(7 * 24 * 12):  # every 5 min
        t = WINTER + i * 5 * MINUTE
        for sensor in (indoor, outdoor):
            values = {m.quantity: m.value for m in sensor.read(t) if m.value is not None}
            for name, mod in (("placed", placed), ("unplaced", unplaced)):
                flagged[name] += implausible(judge(mod, sensor.sensor_id, t, **values))
    assert flagged["placed"] == []
    assert len(flagged["unplaced"]) > 1000  # what a user met before


def test_a_disagreement_within_one_placement_is_still_flagged() -> None:
    """Two indoor sensors 5 Cel apart disagree, whatever the outdoor sensor reads; the outdoor
    sensor is not dragged into it."""
    mod = module({"scd41": "indoor", "bme280": "indoor", "garden": "outdoor"})
    assert implausible(judge(mod, "garden", 0.0, temperature=-3.0, humidity=88.0)) == []
    assert implausible(judge(mod, "bme280", 1.0, temperature=21.5, humidity=38.0)) == []
    assert implausible(judge(mod, "scd41", 2.0, temperature=21.9, humidity=40.0)) == []
    # the SCD41's temperature offset is lost: it reads 5 Cel high
    flagged = implausible(judge(mod, "scd41", 7.0, temperature=26.9, humidity=40.0))
    assert flagged == ["scd41/temperature=26.9"]
    assert implausible(judge(mod, "garden", 8.0, temperature=-3.1, humidity=88.0)) == []


def test_dew_point_is_checked_against_the_temperature_of_its_own_placement() -> None:
    """A dew-point sensor outside is judged with the outdoor temperature and humidity, never
    with the warm, dry indoor air (which would put it 6 Cel off the Magnus value)."""
    mod = module({"room": "indoor", "mast": "outdoor", "dew": "outdoor"})
    for i in range(5):
        t = i * MINUTE
        assert implausible(judge(mod, "mast", t, temperature=2.0, humidity=90.0)) == []
        assert implausible(judge(mod, "room", t + 1, temperature=21.0, humidity=40.0)) == []
        assert implausible(judge(mod, "dew", t + 2, dew_point=0.6)) == []
    # a dew point above the outdoor temperature is implausible, warm as it is indoors
    assert implausible(judge(mod, "dew", 5 * MINUTE, dew_point=8.0)) == ["dew/dew_point=8.0"]


def test_pressure_is_compared_within_a_placement_only() -> None:
    """A barometer on a mast 300 m up reads 3.5 kPa less than the one in the house: another
    placement, not a disagreement. Two barometers in the house 1 kPa apart do disagree."""
    mod = module({"house": "indoor", "hall": "indoor", "mast": "mast"})
    assert implausible(judge(mod, "house", 0.0, pressure=101_300.0)) == []
    assert implausible(judge(mod, "mast", 1.0, pressure=97_800.0)) == []
    assert implausible(judge(mod, "hall", 2.0, pressure=100_300.0)) == ["hall/pressure=100300.0"]


def test_sensors_without_a_placement_are_one_place() -> None:
    """As before placements existed: unplaced sensors are compared with each other, and a
    gateway with one sensor outside needs a placement on that one only."""
    mod = module({"garden": "outdoor"})
    assert implausible(judge(mod, "a", 0.0, temperature=21.0)) == []
    assert implausible(judge(mod, "garden", 1.0, temperature=-4.0)) == []
    assert implausible(judge(mod, "b", 2.0, temperature=21.4)) == []
    assert implausible(judge(mod, "b", 3.0, temperature=25.0)) == ["b/temperature=25.0"]


def test_placements_differing_in_case_or_spacing_are_one_place() -> None:
    mod = module({"a": "Living room", "b": "living  room"})
    assert implausible(judge(mod, "a", 0.0, co2=600.0)) == []
    assert implausible(judge(mod, "b", 1.0, co2=1400.0)) == ["b/co2=1400.0"]


def test_placements_come_from_the_sensor_tables(tmp_path: Any) -> None:
    """The way a user writes it: `placement` in each [[sensor]], nothing in the module."""
    text = """
[device]
name = "t"

[[sensor]]
id = "co2"
driver = "simulated"
kind = "co2"
placement = "indoor"

[[sensor]]
id = "garden"
driver = "simulated"
placement = "outdoor"

[[module]]
id = "plausibility"
kind = "plausibility"
"""
    (mc,) = config.loads(text, base_dir=tmp_path).modules
    chain = ModuleChain.from_config([mc], health=Health())
    readings = [
        Reading("co2", "temperature", "Cel", 21.0, 0.0, True),
        Reading("garden", "temperature", "Cel", -5.0, 1.0, True),
    ]
    chain.judge(readings[:1])
    chain.judge(readings[1:])
    assert implausible(readings) == []
