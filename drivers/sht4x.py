"""Sensirion SHT40/41/43/45 temperature and humidity sensor on I2C (0x44, some parts 0x45).

One-byte commands, then a separate read of two CRC-checked words after the measurement time:
the SHT4x never stretches the clock, which keeps it clear of the Pi's clock-stretching bug. The
serial number is read at open (its CRC proves the chip is there and talking).

RH = -6 + 125 * word / 65535 can leave 0..100 near the ends; it is clipped and the reading says
so with the flag "clipped" (counted as `clipped`).

Optional heater pulses against creep: after `heater_after` consecutive readings above
`heater_above` %RH, one pulse (heater on, then a measurement that is thrown away) follows the
reading. Pulses keep to the datasheet's duty limit, heater on at most 10 % of the time: another
pulse waits at least 10 times the pulse length.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from drivers import manifests
from drivers.base import Measurement
from drivers.i2c_bus import BUS_FIELD, I2CDriver, I2CTransport
from drivers.sensirion import CRCError, unpack_words
from gateway.core.errors import SensorError
from gateway.core.fields import Field

__all__ = [
    "SHT4x",
    "decode_measurement",
    "decode_serial",
    "humidity_from_word",
    "temperature_from_word",
]

# --- protocol constants (SHT4x datasheet section 4.5) -------------------------------------------

ADDRESSES = (0x44, 0x45)

#: precision -> (command, wait s); the datasheet's maxima are 8.3 / 4.5 / 1.6 ms
MEASURE = {"high": (0xFD, 0.009), "medium": (0xF6, 0.005), "low": (0xE0, 0.002)}
#: (heater power, pulse s) -> command; each ends with a high-precision measurement
HEATER = {
    ("high", 1.0): 0x39,  # 200 mW
    ("high", 0.1): 0x32,
    ("medium", 1.0): 0x2F,  # 110 mW
    ("medium", 0.1): 0x24,
    ("low", 1.0): 0x1E,  # 20 mW
    ("low", 0.1): 0x15,
}
HEATER_EXTRA = 0.01  # s after the pulse for its measurement (drivers wait 1.1 s / 0.11 s)
HEATER_DUTY = 0.1  # the heater may be on at most 10 % of the time
READ_SERIAL = 0x89
SOFT_RESET = 0x94
T_SERIAL = 0.01
T_RESET = 0.001


# --- pure decoding ------------------------------------------------------------------------------


def temperature_from_word(word: int) -> float:
    # T = -45 + 175 * word / (2^16 - 1)
    return -45.0 + 175.0 * word / 65535.0


def humidity_from_word(word: int) -> float:
    # RH = -6 + 125 * word / (2^16 - 1), not yet clipped to 0..100
    return -6.0 + 125.0 * word / 65535.0


def decode_measurement(data: bytes) -> tuple[float, float]:
    """(Cel, unclipped %RH) from the 6-byte answer to a measure command; CRCError on a bad
    word."""
    t, rh = unpack_words(data, 2)
    return temperature_from_word(t), humidity_from_word(rh)


def decode_serial(data: bytes) -> int:
    """The 32-bit serial number from the 6-byte answer to 0x89."""
    hi, lo = unpack_words(data, 2)
    return (hi << 16) | lo


def clip_humidity(rh: float) -> tuple[float, bool]:
    """RH clipped to 0..100, and whether it had to be."""
    if rh < 0.0:
        return 0.0, True
    if rh > 100.0:
        return 100.0, True
    return rh, False


# --- the driver --------------------------------------------------------------------------------

_UNITS: Mapping[str, str] = manifests.SHT4X.units()  # from its manifest (drivers/manifests.py)


class SHT4x(I2CDriver):
    """An SHT4x with a chosen precision and optional heater pulses."""

    name = "sht4x"
    default_interval = 30.0
    emulated_chip = "sht4x"
    CONFIG: ClassVar[Mapping[str, Field]] = {
        "bus": BUS_FIELD,
        "address": Field(
            "int",
            "I2C address: 0x44 (SHT40/41/45-AD1B, most boards) or 0x45 (-BD1B parts)",
            default=0x44,
            choices=ADDRESSES,
        ),
        "precision": Field(
            "str",
            'repeatability: "high" (9 ms), "medium" (5 ms) or "low" (2 ms, noisier)',
            default="high",
            choices=tuple(MEASURE),
        ),
        "heater": Field(
            "str",
            'heater pulses against creep in high humidity: "off", or the power "low" (20 mW), '
            '"medium" (110 mW), "high" (200 mW)',
            default="off",
            choices=("off", "low", "medium", "high"),
        ),
        "heater_pulse": Field(
            "duration",
            'length of one heater pulse: "1 s" or "100 ms"',
            default=1.0,
            choices=(0.1, 1.0),
        ),
        "heater_above": Field(
            "float",
            "pulse the heater when RH stays above this many %RH",
            default=95.0,
            min=50.0,
            max=100.0,
        ),
        "heater_after": Field(
            "int",
            "... for this many readings in a row",
            default=5,
            min=1,
        ),
    }

    def __init__(
        self,
        *,
        sensor_id: str,
        options: Mapping[str, Any],
        transport: I2CTransport | None = None,
    ) -> None:
        super().__init__(sensor_id=sensor_id, options=options, transport=transport)
        self._measure_cmd, self._measure_wait = MEASURE[self.options["precision"]]
        self._pulse = float(self.options["heater_pulse"])
        heater: str = self.options["heater"]
        self._heater_cmd = None if heater == "off" else HEATER[(heater, self._pulse)]
        self.serial_number: int | None = None
        self._humid_reads = 0
        self._last_pulse: float | None = None

    @property
    def quantities(self) -> Mapping[str, str]:
        return _UNITS

    def setup(self) -> None:
        t = self.transport
        t.command(bytes((SOFT_RESET,)), delay=T_RESET)
        data = t.command(bytes((READ_SERIAL,)), delay=T_SERIAL, length=6)
        try:
            self.serial_number = decode_serial(data)
        except CRCError as exc:
            self.counters["crc"] += 1
            raise SensorError(f"{t.label}: serial number: {exc}") from None

    def read(self, now: float) -> list[Measurement]:
        t = self.transport
        data = t.command(bytes((self._measure_cmd,)), delay=self._measure_wait, length=6)
        try:
            temperature, raw_rh = decode_measurement(data)
        except CRCError as exc:
            self.counters["crc"] += 1
            raise SensorError(f"{t.label}: {exc}; reading discarded") from None
        humidity, clipped = clip_humidity(raw_rh)
        out = [Measurement("temperature", round(temperature, 3))]
        if clipped:
            self.counters["clipped"] += 1
            out.append(Measurement("humidity", humidity, ("clipped",)))
        else:
            out.append(Measurement("humidity", round(humidity, 3)))
        self._maybe_heat(raw_rh, now)
        return out

    def _maybe_heat(self, raw_rh: float, now: float) -> None:
        if self._heater_cmd is None:
            return
        self._humid_reads = self._humid_reads + 1 if raw_rh > self.options["heater_above"] else 0
        if self._humid_reads < int(self.options["heater_after"]):
            return
        gap = self._pulse / HEATER_DUTY  # pulse starts at least this far apart
        if self._last_pulse is not None and abs(now - self._last_pulse) < gap:
            return
        self._last_pulse = now
        self._humid_reads = 0
        try:
            # The answer is a measurement of the heated sensor: CRC-checked, then thrown away.
            data = self.transport.command(
                bytes((self._heater_cmd,)), delay=self._pulse + HEATER_EXTRA, length=6
            )
            unpack_words(data, 2)
        except CRCError:
            self.counters["crc"] += 1
        except SensorError:
            self.counters["heater_error"] += 1
            return
        self.counters["heater"] += 1


def __getattr__(name: str) -> str:
    # SAMPLE_CONFIG, the sample's text (drivers/sht4x.sample.toml), read when asked for (tests,
    # docs) rather than at every import of the driver
    if name == "SAMPLE_CONFIG":
        return manifests.SHT4X.sample_text()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
