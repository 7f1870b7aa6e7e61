"""SHT4x: conversions, precision levels, serial number, clipping, heater pulses with their duty
limit, and the faults, through the emulated chip."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers import sht4x
from drivers.emulators import i2c as emulated
from drivers.emulators.i2c import VirtualClock, sensirion_crc
from drivers.emulators.i2c_testing import transport_to
from drivers.emulators.sht4x import SHT4xEmulator
from drivers.sensirion import CRCError
from drivers.sht4x import (
    SHT4x,
    clip_humidity,
    decode_measurement,
    decode_serial,
    humidity_from_word,
    temperature_from_word,
)
from gateway.config import settings as config
from gateway.core import plugins
from gateway.core.errors import SensorError
from tests.sampler import Harness
from tests.snippets import HEADER

ROOT = Path(__file__).resolve().parents[2]

GOLDEN = bytes.fromhex("6667a2 8000a2")  # T word 0x6667, RH word 0x8000, with CRCs


@pytest.fixture
def clock() -> Iterator[VirtualClock]:
    with emulated.virtual_time(temperature=21.0, humidity=50.0) as clk:
        yield clk


def chip(clock: VirtualClock, address: int = 0x44) -> SHT4xEmulator:
    return SHT4xEmulator(clock=clock, air=emulated.air(), address=address)


def driver(dev: SHT4xEmulator, clock: VirtualClock, **options: object) -> SHT4x:
    t = transport_to(dev, clock)
    return SHT4x(sensor_id="rh", options={"address": dev.address, **options}, transport=t)


def read(drv: SHT4x, now: float = 0.0) -> dict[str, tuple[float | None, tuple[str, ...]]]:
    return {m.quantity: (m.value, m.flags) for m in drv.read(now)}


# --- conversions -----------------------------------------------------------------------------


def test_conversion_formulas() -> None:
    assert temperature_from_word(0) == -45.0
    assert temperature_from_word(0xFFFF) == 130.0
    assert humidity_from_word(0) == -6.0
    assert humidity_from_word(0xFFFF) == 119.0
    assert clip_humidity(-0.5) == (0.0, True)
    assert clip_humidity(100.01) == (100.0, True)
    assert clip_humidity(42.0) == (42.0, False)


def test_golden_frame() -> None:
    t, rh = decode_measurement(GOLDEN)
    assert t == pytest.approx(25.0027, abs=1e-4)
    assert rh == pytest.approx(-6 + 125 * 0x8000 / 65535, abs=1e-9)
    assert decode_serial(bytes.fromhex("beef92 000081")) == 0xBEEF0000
    with pytest.raises(CRCError):
        decode_measurement(GOLDEN[:5] + b"\x00")


@pytest.mark.parametrize("parse", [decode_measurement, decode_serial])
@given(data=st.binary(max_size=9))
def test_parsers_never_take_a_value_from_a_bad_word(parse: object, data: bytes) -> None:
    assert callable(parse)
    try:
        parse(data)
    except ValueError:  # CRCError is one
        return
    assert len(data) == 6
    assert all(sensirion_crc(data[i : i + 2]) == data[i + 2] for i in (0, 3))


# --- the chip through the emulator -----------------------------------------------------------


def test_serial_number_read_at_open(clock: VirtualClock) -> None:
    dev = chip(clock)
    drv = driver(dev, clock)
    drv.open()
    assert drv.serial_number == (dev.serial[0] << 16) | dev.serial[1]
    assert drv.counters == {}


@pytest.mark.parametrize(
    ("precision", "command", "datasheet_max"),
    [("high", 0xFD, 0.0083), ("medium", 0xF6, 0.0045), ("low", 0xE0, 0.0016)],
)
def test_precision_levels(
    clock: VirtualClock, precision: str, command: int, datasheet_max: float
) -> None:
    dev = chip(clock)
    drv = driver(dev, clock, precision=precision)
    drv.open()
    before = clock.slept
    got = read(drv)
    assert clock.slept - before >= datasheet_max  # waited the measurement out
    assert drv.counters == {}  # so the chip never had to NACK the read
    assert got["temperature"][0] == pytest.approx(21.0, abs=0.01)
    assert got["humidity"][0] == pytest.approx(50.0, abs=0.01)
    assert dev.measurements == 1
    assert dev.log == [0x94, 0x89, command]  # reset, serial number, one measurement


def test_humidity_is_clipped_and_says_so(clock: VirtualClock) -> None:
    dev = chip(clock)
    drv = driver(dev, clock)
    drv.open()
    emulated.air().fix(humidity=103.0)  # condensing: the raw signal passes 100 %RH
    assert read(drv)["humidity"] == (100.0, ("clipped",))
    emulated.air().fix(humidity=-2.0)
    assert read(drv)["humidity"] == (0.0, ("clipped",))
    emulated.air().fix(humidity=60.0)
    assert read(drv)["humidity"][1] == ()
    assert drv.counters["clipped"] == 2


def test_without_the_heater_creep_builds_up(clock: VirtualClock) -> None:
    emulated.air().fix(humidity=97.0)
    dev = chip(clock)
    drv = driver(dev, clock)
    drv.open()
    last = [read(drv, now=10.0 * k)["humidity"] for k in range(30)][-1]
    assert last == (100.0, ("clipped",))  # 97 %RH reads as more than 100
    assert dev.heater_pulses == []


def test_heater_pulses_against_creep_within_the_duty_limit(clock: VirtualClock) -> None:
    emulated.air().fix(humidity=97.0)
    dev = chip(clock)
    drv = driver(dev, clock, heater="high", heater_after=3, heater_pulse="1 s")
    drv.open()
    readings = []
    for k in range(120):  # a read every 2 s for 4 min
        clock.advance(2.0)
        readings.append(read(drv, now=2.0 * k))
    pulses = dev.heater_pulses
    assert len(pulses) >= 10
    assert all(mw == 200 and s == 1.0 for _, mw, s in pulses)
    assert drv.counters["heater"] == len(pulses)
    starts = [t for t, _, _ in pulses]
    assert min(b - a for a, b in itertools.pairwise(starts)) >= 10.0
    assert dev.heater_on_time() / (clock.now()) <= 0.1
    # the heated measurements are thrown away: no reading shows the heated sensor
    assert max(r["temperature"][0] or 0.0 for r in readings) < 22.0
    # and the creep stays small
    assert max(r["humidity"][0] or 0.0 for r in readings[20:]) < 98.5


def test_no_pulse_below_the_threshold(clock: VirtualClock) -> None:
    dev = chip(clock)
    drv = driver(dev, clock, heater="low", heater_pulse=0.1)
    drv.open()
    for k in range(20):
        read(drv, now=30.0 * k)
    assert dev.heater_pulses == [] and "heater" not in drv.counters


def test_second_address(clock: VirtualClock) -> None:
    drv = driver(chip(clock, 0x45), clock)
    drv.open()
    assert read(drv)["temperature"][0] == pytest.approx(21.0, abs=0.01)


# --- faults ----------------------------------------------------------------------------------


def test_bad_crc_is_counted_and_the_reading_discarded(clock: VirtualClock) -> None:
    dev = chip(clock)
    drv = driver(dev, clock)
    drv.open()
    dev.corrupt(1)
    with pytest.raises(SensorError, match=r"CRC mismatch.*discarded"):
        drv.read(0.0)
    assert drv.counters["crc"] == 1
    assert read(drv)["humidity"][0] == pytest.approx(50.0, abs=0.01)


def test_silence_then_recovery(clock: VirtualClock) -> None:
    dev = chip(clock)
    drv = driver(dev, clock)
    drv.open()
    dev.silence()
    with pytest.raises(SensorError, match="no ACK after 4 attempts"):
        drv.read(0.0)
    assert drv.counters == {"nack": 4, "retry": 3}
    dev.silence(False)
    assert read(drv)["temperature"][0] == pytest.approx(21.0, abs=0.01)


def test_faults_through_the_sampler(clock: VirtualClock) -> None:
    dev = chip(clock)
    drv = driver(dev, clock)
    h = Harness(drv)

    async def scenario(h: Harness) -> None:
        await h.until(lambda: len(h.good()) >= 4)
        dev.nack_burst(3)  # retried within one read: nothing lost
        await h.until(lambda: drv.counters["nack"] >= 3 and len(h.good()) >= 8)
        dev.corrupt(1)
        await h.until(lambda: drv.counters["crc"] >= 1)
        dev.unplug()
        await h.until(lambda: h.health.sensor_errors["rh"] >= 1 + 4)
        dev.replug()
        n = len(h.good())
        await h.until(lambda: len(h.good()) >= n + 4)

    h.run(scenario)
    assert all(r.flags == ["sensor-error"] for r in h.failed())
    assert all(
        r.value == pytest.approx(50.0, abs=0.01) for r in h.good() if r.quantity == "humidity"
    )
    assert drv.counters["crc"] == 1 and drv.counters["nack"] >= 3 + 4
    assert h.out[-1].value is not None


# --- registration, configuration and docs ----------------------------------------------------


def test_registered_like_any_driver() -> None:
    assert plugins.driver_class("sht4x") is SHT4x
    for key, field in SHT4x.CONFIG.items():
        assert field.help and not field.required, key


def test_sample_config_passes_config_check(tmp_path: Path) -> None:
    (s,) = config.loads(HEADER + sht4x.SAMPLE_CONFIG, base_dir=tmp_path).sensors
    assert (s.driver, s.options["precision"], s.options["heater_pulse"]) == ("sht4x", "high", 1.0)
    heater = sht4x.SAMPLE_CONFIG.replace('"off"', '"medium"') + 'heater_pulse = "100 ms"\n'
    (s,) = config.loads(HEADER + heater, base_dir=tmp_path).sensors
    assert (s.options["heater"], s.options["heater_pulse"]) == ("medium", 0.1)


def test_docs_show_the_sample_and_every_option() -> None:
    doc = (ROOT / "docs" / "sensors" / "sht4x.md").read_text(encoding="utf-8")
    assert sht4x.SAMPLE_CONFIG in doc
    for key in SHT4x.CONFIG:
        assert f"`{key}`" in doc, key
