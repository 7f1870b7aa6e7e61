"""SCD4x: conversions, the configuration sequence, the modes, ambient pressure compensation fed
through `ambient()`, and the faults, through the emulated command state machine."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers import scd4x
from drivers.emulators import i2c as emulated
from drivers.emulators.i2c import EmulatedBus, VirtualClock, sensirion_crc
from drivers.emulators.i2c_testing import read_values, transport_to
from drivers.emulators.scd4x import SCD4xEmulator
from drivers.i2c_bus import I2CTransport
from drivers.scd4x import (
    SCD4x,
    data_ready,
    decode_measurement,
    decode_serial,
    decode_variant,
    humidity_from_word,
    temperature_from_word,
    temperature_offset_word,
)
from drivers.sensirion import CRCError
from gateway.config import settings as config
from gateway.core import plugins
from gateway.core.errors import ConfigError, SensorError
from tests.sampler import Harness
from tests.snippets import HEADER

ROOT = Path(__file__).resolve().parents[2]

# co2 500 ppm, T word 0x6667, RH word 0x5EB9, each with its CRC
GOLDEN = bytes.fromhex("01f433 6667a2 5eb93c")


@pytest.fixture
def clock() -> Iterator[VirtualClock]:
    with emulated.virtual_time(
        temperature=22.0, humidity=45.0, pressure=101325.0, co2=800.0
    ) as clk:
        yield clk


def chip(clock: VirtualClock, variant: str = "scd41") -> SCD4xEmulator:
    return SCD4xEmulator(clock=clock, air=emulated.air(), variant=variant)


def driver(dev: SCD4xEmulator, clock: VirtualClock, **options: object) -> SCD4x:
    return SCD4x(sensor_id="co2", options=options, transport=transport_to(dev, clock))


# --- conversions -----------------------------------------------------------------------------


def test_conversion_formulas() -> None:
    assert temperature_from_word(0) == -45.0
    assert temperature_from_word(0xFFFF) == 130.0
    assert humidity_from_word(0) == 0.0
    assert humidity_from_word(0xFFFF) == 100.0
    assert temperature_offset_word(4.0) == 1498  # the datasheet's default
    assert temperature_offset_word(0.0) == 0
    assert not data_ready(0x8000)
    assert data_ready(0x8006) and data_ready(0x0001) and data_ready(0x07FF)
    assert not data_ready(0xF800)


@given(st.integers(0, 0xFFFF))
def test_float_conversion_matches_the_c_fixed_point_one(word: int) -> None:
    # Sensirion's C driver divides by 2^16 instead of 2^16 - 1 and truncates: a few m-units
    assert temperature_from_word(word) * 1000 == pytest.approx(
        ((21875 * word) >> 13) - 45000, abs=4.0
    )
    assert humidity_from_word(word) * 1000 == pytest.approx((12500 * word) >> 13, abs=3.0)


def test_golden_measurement_frame() -> None:
    co2, t, rh = decode_measurement(GOLDEN)
    assert co2 == 500
    assert t == pytest.approx(25.0027, abs=1e-4)
    assert rh == pytest.approx(37.0016, abs=1e-4)
    broken = bytearray(GOLDEN)
    broken[4] ^= 0x01
    with pytest.raises(CRCError, match="word 1"):
        decode_measurement(bytes(broken))


@pytest.mark.parametrize("parse", [decode_measurement, decode_serial, decode_variant])
@given(data=st.binary(max_size=12))
def test_parsers_never_take_a_value_from_a_bad_word(parse: object, data: bytes) -> None:
    assert callable(parse)
    try:
        parse(data)
    except ValueError:  # CRCError is one
        return
    assert len(data) in (3, 9)
    for i in range(0, len(data), 3):
        assert sensirion_crc(data[i : i + 2]) == data[i + 2]


def test_variant_words() -> None:
    from drivers.sensirion import pack_words

    assert decode_variant(pack_words(0x0440)) == "scd40"
    assert decode_variant(pack_words(0x1440)) == "scd41"
    assert decode_variant(pack_words(0x5440)) == "scd43"
    assert decode_variant(pack_words(0x3000)) is None


# --- configuration sequence ------------------------------------------------------------------


def test_open_stops_first_then_configures(clock: VirtualClock) -> None:
    dev = chip(clock)
    drv = driver(dev, clock, temperature_offset=2.5, altitude=420, asc=False)
    drv.open()
    names = [n for n, _ in dev.log]
    assert names[0] == "stop_periodic_measurement"
    assert names[-1] == "start_periodic_measurement"
    assert dev.commands("set_temperature_offset") == [(temperature_offset_word(2.5),)]
    assert dev.commands("set_sensor_altitude") == [(420,)]
    assert dev.commands("set_automatic_self_calibration_enabled") == [(0,)]
    assert drv.serial_number == (dev.serial[0] << 32) | (dev.serial[1] << 16) | dev.serial[2]
    assert drv.variant == "scd41"
    assert drv.counters == {}  # every wait long enough: not one NACK


def test_a_chip_left_measuring_is_stopped_before_configuring(clock: VirtualClock) -> None:
    dev = chip(clock)
    dev.on_write(bytes.fromhex("21b1"))  # an earlier run left it measuring
    clock.advance(60)
    drv = driver(dev, clock)
    drv.open()
    assert drv.counters == {}
    assert dev.mode == "periodic"
    assert dev.commands("set_temperature_offset") == [(1498,)]


def test_configuring_while_measuring_is_refused_by_the_chip(clock: VirtualClock) -> None:
    """What the stop protects against: the emulator NACKs, as the chip does."""
    dev = chip(clock)
    dev.on_write(bytes.fromhex("21b1"))
    bus = EmulatedBus()
    bus.attach(0x62, dev)
    t = I2CTransport(bus, 0x62, wait=clock.sleep)
    with pytest.raises(SensorError, match="no ACK"):
        t.write(scd4x.command(scd4x.SET_ALTITUDE, 100))


def test_periodic_readings_follow_the_air(clock: VirtualClock) -> None:
    dev = chip(clock)
    drv = driver(dev, clock)
    drv.open()
    started = clock.now()
    got = read_values(drv)
    assert clock.now() - started >= 5.0  # the first sample comes 5 s after the start
    assert got["co2"] == 800.0
    assert got["temperature"] == pytest.approx(22.0, abs=0.01)
    assert got["humidity"] == pytest.approx(45.0, abs=0.01)
    emulated.air().fix(co2=1200.0)
    assert read_values(drv)["co2"] == 1200.0
    assert dev.commands("get_data_ready_status")


def test_low_power_mode_samples_every_30_s(clock: VirtualClock) -> None:
    dev = chip(clock)
    drv = driver(dev, clock, mode="low-power")
    drv.open()
    assert dev.mode == "low-power" and dev.log[-1][0] == "start_low_power_periodic_measurement"
    t0 = clock.now()
    read_values(drv)
    read_values(drv)
    assert clock.now() - t0 >= 60.0


def test_single_shot_discards_the_first_measurement(clock: VirtualClock) -> None:
    dev = chip(clock)
    drv = driver(dev, clock, mode="single-shot")
    drv.open()
    assert "start_periodic_measurement" not in [n for n, _ in dev.log]
    assert read_values(drv)["co2"] == 800.0
    assert len(dev.commands("measure_single_shot")) == 2  # the first one after power-up dropped
    read_values(drv)
    assert len(dev.commands("measure_single_shot")) == 3
    assert dev.mode == "idle"


def test_single_shot_needs_an_scd41_or_scd43(clock: VirtualClock, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="single-shot"):
        SCD4x(sensor_id="co2", options={"variant": "scd40", "mode": "single-shot"})
    text = HEADER + scd4x.SAMPLE_CONFIG.replace('"scd41"', '"scd40"').replace(
        '"periodic"', '"single-shot"'
    )
    with pytest.raises(ConfigError, match=r"sensor\[0\]\.mode: .*SCD41"):
        config.loads(text, base_dir=tmp_path)
    # "auto" finds out at open
    drv = driver(chip(clock, "scd40"), clock, mode="single-shot")
    with pytest.raises(SensorError, match="needs an SCD41 or SCD43, this is SCD40"):
        drv.open()


def test_a_variant_that_does_not_match_is_refused(clock: VirtualClock) -> None:
    drv = driver(chip(clock, "scd41"), clock, variant="scd43")
    with pytest.raises(SensorError, match="reports an SCD41"):
        drv.open()


# --- ambient pressure ------------------------------------------------------------------------


def test_ambient_pressure_from_another_sensor_reaches_the_chip(clock: VirtualClock) -> None:
    emulated.air().fix(pressure=90_000.0, co2=800.0)  # up a mountain
    dev = chip(clock)
    drv = driver(dev, clock)
    drv.open()
    # the chip assumes sea level: the thinner air reads low
    assert read_values(drv)["co2"] == pytest.approx(800.0 * 90_000 / 101_325, abs=1)
    drv.ambient("pressure", 90_012.0)  # what a BME280 on this gateway just measured, Pa
    assert dev.commands("ambient_pressure") == []  # stored only; sent before the next read
    assert read_values(drv)["co2"] == pytest.approx(800.0, abs=1)
    assert dev.commands("ambient_pressure") == [(900,)]  # hPa
    assert drv.ambient_pressure_hpa == 900
    drv.ambient("pressure", 90_030.0)  # same hPa: nothing to send
    read_values(drv)
    drv.ambient("pressure", 95_000.0)
    read_values(drv)
    assert dev.commands("ambient_pressure") == [(900,), (950,)]
    drv.ambient("temperature", 20.0)  # not a quantity it compensates
    drv.ambient("pressure", 20_000.0)  # outside 700..1200 hPa: ignored
    read_values(drv)
    assert dev.commands("ambient_pressure") == [(900,), (950,)]


def test_ambient_pressure_is_sent_again_after_a_power_cycle(clock: VirtualClock) -> None:
    dev = chip(clock)
    drv = driver(dev, clock)
    drv.ambient("pressure", 98_000.0)
    drv.open()
    assert dev.commands("ambient_pressure") == [(980,)]  # sent while configuring
    dev.replug()
    drv.close()
    drv.open()
    assert dev.commands("ambient_pressure") == [(980,), (980,)]
    assert dev.pressure_hpa == 980


def test_pressure_compensation_can_be_turned_off(clock: VirtualClock) -> None:
    dev = chip(clock)
    drv = driver(dev, clock, pressure_compensation=False)
    drv.open()
    drv.ambient("pressure", 90_000.0)
    read_values(drv)
    assert dev.commands("ambient_pressure") == []


# --- faults ----------------------------------------------------------------------------------


def test_bad_crc_is_counted_and_the_reading_discarded(clock: VirtualClock) -> None:
    dev = chip(clock)
    drv = driver(dev, clock)
    drv.open()
    read_values(drv)
    dev.corrupt(1)
    with pytest.raises(SensorError, match=r"CRC mismatch.*discarded"):
        drv.read(0.0)
    assert drv.counters["crc"] == 1
    assert read_values(drv)["co2"] == 800.0


def test_stuck_data_not_ready_fails_then_recovers(clock: VirtualClock) -> None:
    dev = chip(clock)
    drv = driver(dev, clock)
    drv.open()
    dev.stall()
    with pytest.raises(SensorError, match="no new measurement"):
        drv.read(0.0)
    assert drv.counters["not_ready"] == 1
    dev.stall(False)
    assert read_values(drv)["co2"] == 800.0


def test_nack_burst_is_retried(clock: VirtualClock) -> None:
    dev = chip(clock)
    drv = driver(dev, clock)
    drv.open()
    dev.nack_burst(2)
    assert read_values(drv)["co2"] == 800.0
    assert drv.counters == {"nack": 2, "retry": 2}


def test_faults_through_the_sampler(clock: VirtualClock) -> None:
    """Bad CRCs never reach the readings; an unplugged chip fails, and once plugged back (it
    powers up idle, settings lost) it is re-opened, configured again and read again."""
    dev = chip(clock)
    drv = driver(dev, clock)
    h = Harness(drv)

    async def scenario(h: Harness) -> None:
        await h.until(lambda: len(h.good()) >= 6)
        dev.corrupt(2)
        await h.until(lambda: drv.counters["crc"] >= 2 and len(h.out) >= 6 + 6 + 6)
        dev.unplug()
        await h.until(lambda: h.health.sensor_errors["co2"] >= 2 + 4)
        dev.replug()
        n = len(h.good())
        await h.until(lambda: len(h.good()) >= n + 6)

    h.run(scenario)
    assert all(r.value is None and r.flags == ["sensor-error"] for r in h.failed())
    assert {r.value for r in h.good() if r.quantity == "co2"} == {800.0}
    assert drv.counters["crc"] == 2
    assert drv.counters["nack"] >= 4
    assert dev.power_cycles == 1 and dev.mode == "periodic"
    assert len(dev.commands("stop_periodic_measurement")) >= 2  # configured again
    assert h.out[-1].value is not None


# --- registration, configuration and docs ----------------------------------------------------


def test_registered_like_any_driver() -> None:
    assert plugins.driver_class("scd4x") is SCD4x
    for key, field in SCD4x.CONFIG.items():
        assert field.help and not field.required, key


def test_sample_config_passes_config_check(tmp_path: Path) -> None:
    (s,) = config.loads(HEADER + scd4x.SAMPLE_CONFIG, base_dir=tmp_path).sensors
    assert (s.driver, s.options["variant"], s.options["mode"]) == ("scd4x", "scd41", "periodic")
    assert math.isclose(s.interval, 30.0)


def test_docs_show_the_sample_and_every_option() -> None:
    doc = (ROOT / "docs" / "sensors" / "scd4x.md").read_text(encoding="utf-8")
    assert scd4x.SAMPLE_CONFIG in doc
    for key in SCD4x.CONFIG:
        assert f"`{key}`" in doc, key
