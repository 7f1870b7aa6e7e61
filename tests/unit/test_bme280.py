"""BME280 / BMP280: datasheet vectors, calibration unpacking from raw bytes, the whole path from
the emulated register file to physical values, forced mode, and the faults."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers import bme280
from drivers.bme280 import (
    BME280,
    Calibration,
    compensate_humidity,
    compensate_pressure,
    compensate_temperature,
    decode_adc,
    decode_calibration,
    decode_measurement,
    measurement_time_ms,
)
from drivers.emulators import i2c as emulated
from drivers.emulators.bme280 import (
    DEFAULT_CALIBRATION,
    BME280Emulator,
    double_humidity,
    double_pressure,
    double_temperature,
)
from drivers.emulators.i2c import VirtualClock
from drivers.emulators.i2c_testing import read_values, transport_to
from gateway.config import settings as config
from gateway.core import plugins
from gateway.core.errors import ConfigError, SensorError
from tests.sampler import Harness
from tests.snippets import HEADER

ROOT = Path(__file__).resolve().parents[2]

# BMP280 datasheet example (section 3.12): register images [V] in the reference sheet
DATASHEET_0x88 = bytes.fromhex("706b436718fc7d8e43d6d00b270b8c00f9ff8c3cf8c67017")
DATASHEET_0xF7 = bytes.fromhex("655ac07eed00")
DATASHEET = {
    "T1": 27504, "T2": 26435, "T3": -1000, "P1": 36477, "P2": -10685, "P3": 3024,
    "P4": 2855, "P5": 140, "P6": -7, "P7": 15500, "P8": -14600, "P9": 6000,
}  # fmt: skip


def chip(
    clock: VirtualClock, *, chip_id: int = 0x60, nvm: dict[int, bytes] | None = None
) -> BME280Emulator:
    return BME280Emulator(clock=clock, air=emulated.air(), chip_id=chip_id, nvm=nvm)


def driver(dev: BME280Emulator, clock: VirtualClock, **options: object) -> BME280:
    return BME280(sensor_id="climate", options=options, transport=transport_to(dev, clock))


# --- decode functions against the datasheet --------------------------------------------------


def test_datasheet_vector_from_raw_register_bytes() -> None:
    cal = decode_calibration(DATASHEET_0x88 + b"\x00\x00")
    assert {k: getattr(cal, k) for k in DATASHEET} == DATASHEET
    adc_p, adc_t, adc_h = decode_adc(DATASHEET_0xF7)
    assert (adc_p, adc_t, adc_h) == (415148, 519888, None)
    centi, t_fine = compensate_temperature(adc_t, cal)
    assert (centi, t_fine) == (2508, 128422)
    assert compensate_pressure(adc_p, t_fine, cal) == 25767233  # Q24.8 = 100653.25 Pa
    sample = decode_measurement(DATASHEET_0xF7, cal)
    assert (sample.temperature, sample.pressure, sample.humidity) == (25.08, 100653.25, None)


def test_the_emulators_double_formulas_match_the_datasheet() -> None:
    t, t_fine = double_temperature(519888, DATASHEET)
    assert t == pytest.approx(25.0824779, abs=1e-6)
    assert double_pressure(415148, t_fine, DATASHEET) == pytest.approx(100653.258, abs=1e-3)


def test_measurement_time() -> None:
    assert measurement_time_ms(1, 1, 1) == pytest.approx(9.3)
    assert measurement_time_ms(16, 16, 16) == pytest.approx(112.8)
    assert measurement_time_ms(1, 1, 0) == pytest.approx(6.425)  # a BMP280 at x1


def h_bytes(h2: int, h3: int, h4: int, h5: int, h6: int) -> bytes:
    """The 0xE1..0xE7 image, packed by hand from the datasheet's register table."""
    return struct.pack("<h", h2) + bytes(
        (h3, (h4 >> 4) & 0xFF, (h4 & 0xF) | ((h5 & 0xF) << 4), (h5 >> 4) & 0xFF, h6 & 0xFF)
    )


def test_negative_h4_h5_from_raw_bytes() -> None:
    tp = DATASHEET_0x88 + b"\x00\x4b"  # H1 = 75
    h = bytes.fromhex("6a0100ff24fe1e")  # H2 = 362, H3 = 0, E4 E5 E6 = ff 24 fe, H6 = 30
    cal = decode_calibration(tp, h)
    assert (cal.H1, cal.H2, cal.H3, cal.H4, cal.H5, cal.H6) == (75, 362, 0, -12, -30, 30)
    # read unsigned, as the well-known bug did, the same bytes give 4084 and 4066
    assert (h[3] << 4 | h[4] & 0xF, h[5] << 4 | h[4] >> 4) == (4084, 4066)


@given(
    st.integers(-2048, 2047),
    st.integers(-2048, 2047),
    st.integers(-32768, 32767),
    st.integers(0, 255),
    st.integers(-128, 127),
)
def test_every_12_bit_signed_h4_h5_unpacks(h4: int, h5: int, h2: int, h3: int, h6: int) -> None:
    cal = decode_calibration(DATASHEET_0x88 + b"\x00\x4b", h_bytes(h2, h3, h4, h5, h6))
    assert (h2, h3, h4, h5, h6) == (cal.H2, cal.H3, cal.H4, cal.H5, cal.H6)


def test_integer_humidity_agrees_with_the_double_formula() -> None:
    cal = decode_calibration(DATASHEET_0x88 + b"\x00\x4b", h_bytes(362, 0, -12, -30, 30))
    ref = dict(DEFAULT_CALIBRATION)
    checked = 0
    for adc_t in (350_000, 450_000, 519_888, 600_000, 700_000):
        _, t_fine = compensate_temperature(adc_t, cal)
        for adc_h in range(0, 20_000, 250):
            expected = double_humidity(adc_h, t_fine, ref)
            got = compensate_humidity(adc_h, t_fine, cal) / 1024.0
            assert got == pytest.approx(expected, abs=0.02), (adc_t, adc_h)
            checked += expected > 0.0
    assert checked > 200


def test_integer_pressure_agrees_with_the_double_formula() -> None:
    cal = decode_calibration(DATASHEET_0x88 + b"\x00\x00")
    for adc_t in (400_000, 519_888, 650_000):
        _, t_fine = compensate_temperature(adc_t, cal)
        for adc_p in range(250_000, 600_000, 5_000):
            expected = double_pressure(adc_p, t_fine, DATASHEET)
            assert compensate_pressure(adc_p, t_fine, cal) / 256 == pytest.approx(expected, abs=0.5)


# --- property tests on the parsers -----------------------------------------------------------


@given(st.binary(max_size=40), st.one_of(st.none(), st.binary(max_size=10)))
def test_calibration_parser_never_crashes(tp: bytes, h: bytes | None) -> None:
    try:
        cal = decode_calibration(tp, h)
    except ValueError:
        assert len(tp) != 26 or (h is not None and len(h) != 7)
        return
    assert -2048 <= cal.H4 <= 2047 and -2048 <= cal.H5 <= 2047


@given(
    st.binary(min_size=26, max_size=26), st.binary(min_size=7, max_size=7), st.binary(max_size=9)
)
def test_measurement_parser_never_crashes(tp: bytes, h: bytes, data: bytes) -> None:
    cal = decode_calibration(tp, h)
    try:
        sample = decode_measurement(data, cal)
    except ValueError:
        return
    assert len(data) in (6, 8)
    assert math.isfinite(sample.temperature) and math.isfinite(sample.pressure)
    assert sample.humidity is None or 0.0 <= sample.humidity <= 100.0


def test_not_measured_markers_are_refused() -> None:
    cal = decode_calibration(DATASHEET_0x88 + b"\x00\x00")
    with pytest.raises(ValueError, match="temperature was not measured"):
        decode_measurement(bytes.fromhex("655ac0800000"), cal)
    with pytest.raises(ValueError, match="pressure was not measured"):
        decode_measurement(bytes.fromhex("8000007eed00"), cal)


# --- the whole path through the emulated register file ---------------------------------------


def test_datasheet_vector_through_the_emulator(clock: VirtualClock) -> None:
    dev = chip(clock, chip_id=0x58, nvm={0x88: DATASHEET_0x88 + b"\x00\x00"})
    dev.force_adc(t=519888, p=415148)
    drv = driver(dev, clock)
    drv.open()
    assert read_values(drv) == {"temperature": 25.08, "pressure": 100653.25}


@pytest.mark.parametrize(
    ("t", "rh", "p"),
    [(23.5, 55.0, 98765.0), (-20.0, 80.0, 101325.0), (35.0, 20.0, 90000.0), (5.0, 99.0, 105000.0)],
)
@pytest.mark.parametrize("oversampling", [1, 16])
def test_values_recovered_from_raw_registers(
    clock: VirtualClock, t: float, rh: float, p: float, oversampling: int
) -> None:
    emulated.air().fix(temperature=t, humidity=rh, pressure=p)
    dev = chip(clock)
    drv = driver(dev, clock, oversampling=oversampling)
    drv.open()
    got = read_values(drv)
    assert got["temperature"] == pytest.approx(t, abs=0.02)
    assert got["humidity"] == pytest.approx(rh, abs=0.15)
    assert got["pressure"] == pytest.approx(p, abs=2.5 if oversampling == 1 else 0.5)
    assert drv.counters == {}


def test_the_emulator_calibration_catches_the_sign_bug(clock: VirtualClock) -> None:
    """Decoding the emulator's registers with H4/H5 read unsigned gives nonsense humidity."""
    emulated.air().fix(temperature=22.0, humidity=50.0, pressure=100000.0)
    dev = chip(clock)
    drv = driver(dev, clock)
    drv.open()
    assert read_values(drv)["humidity"] == pytest.approx(50.0, abs=0.15)
    e = dev.regs[0xE1:0xE8]
    good = decode_calibration(bytes(dev.regs[0x88:0xA2]), bytes(e))
    buggy = Calibration(
        **{f: getattr(good, f) for f in Calibration.__dataclass_fields__ if f not in ("H4", "H5")},
        H4=e[3] << 4 | e[4] & 0xF,
        H5=e[5] << 4 | e[4] >> 4,
    )
    sample = decode_measurement(bytes(dev.regs[0xF7:0xFF]), buggy)
    assert sample.humidity is not None and abs(sample.humidity - 50.0) > 10


def test_forced_mode_each_read(clock: VirtualClock) -> None:
    dev = chip(clock)
    drv = driver(dev, clock, oversampling=4)
    drv.open()
    assert dev.measurements == 0
    emulated.air().fix(temperature=20.0)
    slept = clock.slept
    assert read_values(drv)["temperature"] == pytest.approx(20.0, abs=0.02)
    assert clock.slept - slept >= measurement_time_ms(4, 4, 4) / 1000 - 1e-9
    emulated.air().fix(temperature=21.0)
    assert read_values(drv)["temperature"] == pytest.approx(21.0, abs=0.02)
    assert dev.measurements == 2
    # ctrl_hum is written before the ctrl_meas that latches it, every time
    regs = [r for r, _ in dev.writes if r in (0xF2, 0xF4)]
    assert regs == [0xF2, 0xF4, 0xF2, 0xF4]
    assert (0xF4, (3 << 5) | (3 << 2) | 1) in dev.writes  # x4, x4, forced
    assert (0xE0, 0xB6) in dev.writes  # soft reset at open


def test_registered_like_any_driver() -> None:
    assert plugins.driver_class("bme280") is BME280
    for key, field in BME280.CONFIG.items():
        assert field.help and not field.required, key


# --- BMP280 ----------------------------------------------------------------------------------


def test_bmp280_runs_without_humidity_and_says_so(clock: VirtualClock) -> None:
    dev = chip(clock, chip_id=0x58)
    drv = driver(dev, clock)
    assert "humidity" in drv.quantities  # "auto" cannot know before it asks
    drv.open()
    assert dict(drv.quantities) == {"temperature": "Cel", "pressure": "Pa"}
    assert drv.counters["no_humidity"] == 1
    got = read_values(drv)
    assert set(got) == {"temperature", "pressure"}
    assert not any(r == 0xF2 for r, _ in dev.writes)  # no ctrl_hum on a BMP280


def test_bmp280_configured_as_such(clock: VirtualClock) -> None:
    drv = driver(chip(clock, chip_id=0x58), clock, model="bmp280")
    assert dict(drv.quantities) == {"temperature": "Cel", "pressure": "Pa"}
    drv.open()
    assert drv.counters == {}


def test_bmp280_when_a_bme280_is_required(clock: VirtualClock) -> None:
    drv = driver(chip(clock, chip_id=0x58), clock, model="bme280")
    with pytest.raises(SensorError, match=r'BMP280.*model = "bmp280"'):
        drv.open()


def test_a_different_chip_is_refused(clock: VirtualClock) -> None:
    drv = driver(chip(clock, chip_id=0x61), clock)
    with pytest.raises(SensorError, match="chip id 0x61"):
        drv.open()


# --- faults ----------------------------------------------------------------------------------


def test_nack_burst_is_retried(clock: VirtualClock) -> None:
    dev = chip(clock)
    drv = driver(dev, clock)
    drv.open()
    dev.nack_burst(3)
    assert read_values(drv)["pressure"] is not None
    assert drv.counters == {"nack": 3, "retry": 3}


def test_stuck_measurement_fails_then_recovers(clock: VirtualClock) -> None:
    dev = chip(clock)
    drv = driver(dev, clock)
    drv.open()
    dev.stick()
    with pytest.raises(SensorError, match="did not complete"):
        drv.read(0.0)
    assert drv.counters["not_ready"] == 1
    dev.stick(False)
    assert read_values(drv)["temperature"] is not None


def test_humidity_clamp_is_flagged(clock: VirtualClock) -> None:
    dev = chip(clock)
    dev.force_adc(h=0xFFFF)
    drv = driver(dev, clock)
    drv.open()
    (hum,) = [m for m in drv.read(0.0) if m.quantity == "humidity"]
    assert (hum.value, hum.flags) == (100.0, ("clipped",))
    assert drv.counters["clipped"] == 1


def test_unplugged_then_replugged_through_the_sampler(clock: VirtualClock) -> None:
    dev = chip(clock)
    drv = driver(dev, clock)
    h = Harness(drv)

    async def scenario(h: Harness) -> None:
        await h.until(lambda: len(h.good()) >= 9)
        dev.unplug()
        await h.until(lambda: h.health.sensor_errors["climate"] >= 5)
        dev.replug()  # power-cycled: registers back to reset values, calibration from NVM
        n = len(h.out)
        await h.until(lambda: len(h.good()) >= 9 + 9 and len(h.out) > n)

    h.run(scenario)
    assert h.failed() and all(r.flags == ["sensor-error"] for r in h.failed())
    assert h.out[-1].value is not None
    assert drv.counters["nack"] >= 5 * 4 - 4 and drv.counters["retry"] >= 5 * 3 - 3
    assert dev.writes.count((0xE0, 0xB6)) >= 2, "re-opened after the failures"


# --- configuration and docs ------------------------------------------------------------------


def test_sample_config_passes_config_check(tmp_path: Path) -> None:
    cfg = config.loads(HEADER + bme280.SAMPLE_CONFIG, base_dir=tmp_path)
    (s,) = cfg.sensors
    assert (s.driver, s.options["address"], s.options["bus"]) == ("bme280", 0x76, "1")


def test_bad_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="address"):
        config.loads(HEADER + bme280.SAMPLE_CONFIG.replace("0x76", "0x75"), base_dir=tmp_path)
    with pytest.raises(ConfigError, match="did you mean 'emulated'"):
        config.loads(
            HEADER + bme280.SAMPLE_CONFIG.replace("bus = 1", 'bus = "emulate"'), base_dir=tmp_path
        )


def test_docs_show_the_sample_and_every_option() -> None:
    doc = (ROOT / "docs" / "sensors" / "bme280.md").read_text(encoding="utf-8")
    assert bme280.SAMPLE_CONFIG in doc
    for key in BME280.CONFIG:
        assert f"`{key}`" in doc, key
