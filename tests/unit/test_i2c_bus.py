"""The I2C transport, Sensirion framing, the emulated bus and `probe_i2c`.

Faults are injected at the bus: emulated chips that NACK, vanish and come back, and (for the
errno classes the emulators do not produce) a bus object raising the kernel's errors.
"""

from __future__ import annotations

import errno
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers import scd4x
from drivers.bme280 import BME280
from drivers.emulators import i2c as emulated
from drivers.emulators.bme280 import BME280Emulator
from drivers.emulators.i2c import VirtualClock, sensirion_crc
from drivers.emulators.i2c_testing import transport_to
from drivers.emulators.scd4x import SCD4xEmulator
from drivers.emulators.sht4x import SHT4xEmulator
from drivers.i2c_bus import (
    BUS_FIELD,
    I2CTransport,
    bus_path,
    check_bus,
    open_transport,
    validated_options,
)
from drivers.probe_i2c import probe_i2c
from drivers.sensirion import CRCError, crc8, pack_words, unpack_words
from drivers.sht4x import SHT4x
from gateway.config import settings as config
from gateway.core.errors import ConfigError, SensorError
from tests.sampler import Harness
from tests.snippets import HEADER

# --- Sensirion CRC-8 and words ---------------------------------------------------------------


def test_crc8_datasheet_vectors() -> None:
    assert crc8(b"\xbe\xef") == 0x92
    assert crc8(b"\x00\x00") == 0x81
    assert crc8(b"\x80\x00") == 0xA2


@given(st.binary(min_size=2, max_size=2))
def test_crc8_agrees_with_the_bitwise_reference(pair: bytes) -> None:
    assert crc8(pair) == sensirion_crc(pair)


def test_datasheet_byte_examples() -> None:
    assert scd4x.command(scd4x.SET_TEMPERATURE_OFFSET, 1498) == bytes.fromhex("241d05da29")
    assert scd4x.command(scd4x.SET_AMBIENT_PRESSURE, 1013) == bytes.fromhex("e00003f5db")
    assert scd4x.command(scd4x.SET_ALTITUDE, 0) == bytes.fromhex("2427000081")
    assert scd4x.command(scd4x.SET_ASC_ENABLED, 1) == bytes.fromhex("24160001b0")


@given(st.lists(st.integers(0, 0xFFFF), max_size=8))
def test_words_round_trip(words: list[int]) -> None:
    assert unpack_words(pack_words(*words)) == tuple(words)


@given(st.binary(max_size=40))
def test_unpack_never_yields_a_word_with_a_bad_crc(data: bytes) -> None:
    try:
        words = unpack_words(data)
    except CRCError:
        assert any(
            sensirion_crc(data[i : i + 2]) != data[i + 2] for i in range(0, len(data) - 2, 3)
        )
        return
    except ValueError:
        assert len(data) % 3
        return
    assert len(words) * 3 == len(data)
    for i, word in enumerate(words):
        chunk = data[3 * i : 3 * i + 3]
        assert sensirion_crc(chunk[:2]) == chunk[2]
        assert word == int.from_bytes(chunk[:2], "big")


@given(st.binary(min_size=6, max_size=6), st.integers(0, 47))
def test_one_flipped_bit_is_always_caught(data: bytes, bit: int) -> None:
    valid = pack_words(int.from_bytes(data[:2], "big"), int.from_bytes(data[2:4], "big"))
    flipped = bytearray(valid)
    flipped[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(CRCError):
        unpack_words(bytes(flipped), 2)


def test_unpack_checks_the_length() -> None:
    with pytest.raises(ValueError, match="expected 9 bytes"):
        unpack_words(pack_words(1, 2), 3)


# --- the transport -------------------------------------------------------------------------------


def test_nack_burst_is_retried_with_backoff_and_counted(clock: VirtualClock) -> None:
    dev = BME280Emulator(clock=clock)
    waits: list[float] = []
    counters: Counter[str] = Counter()
    t = I2CTransport(emulated.bus(), 0x76, wait=waits.append, counters=counters)
    emulated.attach(0x76, dev)
    dev.nack_burst(2)
    assert t.read_register(0xD0, 1) == b"\x60"
    assert counters == {"nack": 2, "retry": 2}
    assert waits == [0.002, 0.004]  # exponential backoff
    assert dev.nacked == 2 and dev.transfers == 3


def test_a_chip_that_is_gone_raises_after_the_retries(clock: VirtualClock) -> None:
    dev = BME280Emulator(clock=clock)
    t = transport_to(dev, clock)
    dev.unplug()
    with pytest.raises(SensorError, match="no ACK after 4 attempts"):
        t.read_register(0xD0, 1)
    assert t.counters == {"nack": 4, "retry": 3}
    dev.replug()
    assert t.read_register(0xD0, 1) == b"\x60"
    assert dev.power_cycles == 1


class ErrnoBus:
    """A bus whose next transfers fail with a given errno, then pass through to a chip."""

    def __init__(self, dev: Any, code: int, times: int) -> None:
        self.dev, self.code, self.times = dev, code, times
        self.closed = False

    def i2c_rdwr(self, *msgs: Any) -> None:
        if self.times > 0:
            self.times -= 1
            raise OSError(self.code, "injected")
        self.dev.i2c_rdwr(*msgs)

    def close(self) -> None:
        self.closed = True


@pytest.mark.parametrize("code", [errno.EIO, errno.ETIMEDOUT])
def test_bus_errors_are_retried_as_io_errors(clock: VirtualClock, code: int) -> None:
    t = I2CTransport(ErrnoBus(BME280Emulator(clock=clock), code, 3), 0x76, wait=clock.sleep)
    assert t.read_register(0xD0, 1) == b"\x60"
    assert t.counters == {"io_error": 3, "retry": 3}


def test_other_errors_fail_at_once(clock: VirtualClock) -> None:
    bus = ErrnoBus(BME280Emulator(clock=clock), errno.EBADF, 1)
    t = I2CTransport(bus, 0x76, wait=clock.sleep)
    with pytest.raises(SensorError, match="injected"):
        t.read_register(0xD0, 1)
    assert t.counters == {}
    t.close()
    assert bus.closed
    with pytest.raises(SensorError, match="closed"):
        t.read_register(0xD0, 1)


def test_command_waits_between_write_and_a_separate_read(clock: VirtualClock) -> None:
    dev = SHT4xEmulator(clock=clock)
    t = transport_to(dev, clock)
    before = dev.transfers
    data = t.command(b"\x89", delay=0.01, length=6)
    assert dev.transfers - before == 2  # a write transfer, then a read transfer
    assert unpack_words(data, 2) == dev.serial
    assert clock.slept == pytest.approx(0.01)


def test_a_read_before_the_chip_is_done_is_nacked_and_retried(clock: VirtualClock) -> None:
    dev = SHT4xEmulator(clock=clock)
    t = transport_to(dev, clock)
    t.command(b"\xfd", delay=0.0)  # measure, and read at once: the chip is still busy
    data = t.read(6)
    assert len(unpack_words(data, 2)) == 2
    assert t.counters["nack"] >= 1 and t.counters["retry"] == t.counters["nack"]


# --- opening buses and options ---------------------------------------------------------------


def test_bus_values() -> None:
    assert bus_path(1) == bus_path("1") == "/dev/i2c-1"
    assert bus_path("/dev/i2c-3") == "/dev/i2c-3"
    for good in ("1", "0", "/dev/i2c-22", "emulated", 1):
        assert check_bus(good) is None, good
    assert "did you mean 'emulated'" in (check_bus("emulate") or "")
    for bad in ("one", "/dev/ttyUSB0", "", -1):
        assert check_bus(bad) is not None, bad
    assert BUS_FIELD.default == "1"


def test_a_missing_bus_says_how_to_enable_it() -> None:
    with pytest.raises(SensorError, match="dtparam=i2c_arm=on"):
        open_transport("/dev/i2c-250", 0x76)


def test_options_from_python_are_checked_like_the_config() -> None:
    assert validated_options(BME280, "x", {"bus": 1})["address"] == 0x76
    with pytest.raises(ConfigError) as info:
        validated_options(BME280, "x", {"adress": 0x77, "oversampling": 3, "bus": "i2c1"})
    text = str(info.value)
    assert "did you mean 'address'" in text
    assert "oversampling" in text and "bus" in text
    with pytest.raises(ConfigError, match="heater_pulse"):
        SHT4x(sensor_id="x", options={"heater_pulse": "2 s"})
    assert SHT4x(sensor_id="x", options={"heater_pulse": "100 ms"}).options["heater_pulse"] == 0.1


def test_an_empty_address_nacks(clock: VirtualClock) -> None:
    emulated.reset(clock=clock, defaults=False)
    t = open_transport("emulated", 0x76)
    with pytest.raises(SensorError, match="no ACK"):
        t.read_register(0xD0, 1)


def test_the_emulated_bus_creates_the_chip_a_driver_asks_for(clock: VirtualClock) -> None:
    drv = BME280(sensor_id="p", options={"bus": "emulated", "address": 0x77, "model": "bmp280"})
    drv.open()
    dev = emulated.bus().devices[0x77]
    assert isinstance(dev, BME280Emulator) and dev.chip_id == 0x58
    assert [m.quantity for m in drv.read(0.0)] == ["temperature", "pressure"]
    drv.close()
    drv.close()  # twice is fine


def test_close_before_open_and_a_failed_open_closes_itself(clock: VirtualClock) -> None:
    drv = SHT4x(sensor_id="s", options={"bus": "emulated"})
    drv.close()
    emulated.ensure(0x44, "sht4x").unplug()
    with pytest.raises(SensorError):
        drv.open()
    with pytest.raises(SensorError, match="not open"):
        drv.read(0.0)


# --- probe -----------------------------------------------------------------------------------


def config_check(text: str, tmp_path: Path) -> config.Config:
    return config.loads(HEADER + text, source="probe.toml", base_dir=tmp_path)


def test_probe_finds_the_default_emulated_chips(clock: VirtualClock, tmp_path: Path) -> None:
    found = probe_i2c(["emulated"], wait=clock.sleep)
    assert [(f.address, f.chip, f.driver) for f in found] == [
        (0x44, "SHT4x", "sht4x"),
        (0x62, "SCD41", "scd4x"),
        (0x76, "BME280", "bme280"),
    ]
    snippets = "\n".join(f.snippet for f in found)
    cfg = config_check(snippets, tmp_path)
    assert [(s.id, s.driver, s.options["bus"]) for s in cfg.sensors] == [
        ("sht4x-44", "sht4x", "emulated"),
        ("scd4x-62", "scd4x", "emulated"),
        ("bme280-76", "bme280", "emulated"),
    ]
    assert cfg.sensors[1].options["variant"] == "scd41"
    assert "address = 0x76" in found[2].snippet


def test_probe_checks_identities_not_addresses(clock: VirtualClock, tmp_path: Path) -> None:
    emulated.reset(clock=clock, defaults=False)
    emulated.attach(0x76, BME280Emulator(clock=clock, chip_id=0x61))  # a BME680: not ours
    emulated.attach(0x77, BME280Emulator(clock=clock, chip_id=0x58))  # a BMP280
    emulated.attach(0x45, SHT4xEmulator(clock=clock, address=0x45))
    bad = emulated.attach(0x44, SHT4xEmulator(clock=clock))
    bad.corrupt(10)  # answers, but not with valid CRCs: not an SHT4x we can trust
    running = emulated.attach(0x62, SCD4xEmulator(clock=clock, variant="scd40"))
    running.on_write(bytes.fromhex("21b1"))  # left measuring by an earlier run
    found = probe_i2c(["emulated"], wait=clock.sleep)
    assert [(f.address, f.chip) for f in found] == [
        (0x45, "SHT4x"),
        (0x62, "SCD40"),
        (0x77, "BMP280"),
    ]
    assert found[2].options["model"] == "bmp280"
    assert found[0].options["address"] == 0x45
    cfg = config_check("\n".join(f.snippet for f in found), tmp_path)
    drivers = {s.id: s.driver for s in cfg.sensors}
    assert drivers == {"sht4x-45": "sht4x", "scd4x-62": "scd4x", "bmp280-77": "bme280"}


def test_probe_scans_each_bus_once(clock: VirtualClock, tmp_path: Path) -> None:
    found = probe_i2c(["emulated", "emulated"], wait=clock.sleep)
    assert len(found) == 3
    config_check("\n".join(f.snippet for f in found), tmp_path)


def test_probe_of_a_missing_bus_raises() -> None:
    with pytest.raises(SensorError, match="/dev/i2c-250"):
        probe_i2c([250])


# --- through the sampler -------------------------------------------------------------------------


def test_unplug_and_replug_through_the_sampler(clock: VirtualClock) -> None:
    dev = emulated.ensure(0x76, "bme280")
    drv = BME280(sensor_id="climate", options={"bus": "emulated"})
    h = Harness(drv)

    async def scenario(h: Harness) -> None:
        await h.until(lambda: len(h.good()) >= 6)
        dev.unplug()
        await h.until(lambda: len(h.failed()) >= 3 * 4)  # 4 failed reads, 3 quantities each
        opens = dev.power_cycles
        dev.replug()
        n = len(h.out)
        await h.until(lambda: len(h.out) > n + 6 and h.out[-1].value is not None)
        assert dev.power_cycles == opens + 1

    h.run(scenario)
    failed = h.failed()
    assert failed and all(r.flags == ["sensor-error"] for r in failed)
    assert h.health.sensor_errors["climate"] >= 4
    assert drv.counters["nack"] >= 4 and drv.counters["retry"] >= 3
    assert h.out[-1].value is not None, "readings resumed after the replug"
    assert "no ACK" in h.health.last_error
