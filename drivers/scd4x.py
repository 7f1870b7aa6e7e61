"""Sensirion SCD40 / SCD41 / SCD43 CO2 sensor (photoacoustic NDIR) on I2C at 0x62.

Configuring: a chip still measuring from a previous run NACKs every configuration command, so
open() first sends stop_periodic_measurement and waits its 500 ms, then reads the serial number
(a CRC-checked answer proves it is an SCD4x), checks the variant, writes the temperature offset,
altitude, ambient pressure (when known) and ASC setting, and starts the chosen mode. The
settings are volatile: they are written at every open and never persisted (the EEPROM is good
for about 2000 writes), so a power-cycled chip is configured again when the sampler re-opens it.

Reading: in the periodic modes, get_data_ready is polled (data ready <=> word & 0x07FF != 0)
until a new sample is there, then read_measurement; in single-shot mode (SCD41/43) each read
triggers one 5 s measurement, and the first after open is discarded as the datasheet asks.
Every word carries a CRC-8; a response with a bad CRC is counted (`crc`) and discarded whole.

Ambient pressure: CO2 from an NDIR cell depends on gas density, so the chip compensates with the
altitude or, better, the current pressure. A BME280 on the same gateway feeds it through the
`ambient("pressure", Pa)` hook; before each read a new value is sent with set_ambient_pressure
(hPa, allowed while measuring).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from drivers import manifests
from drivers.base import Measurement
from drivers.i2c_bus import BUS_FIELD, I2CDriver, I2CTransport
from drivers.sensirion import CRCError, pack_words, unpack_words
from gateway.core.errors import SensorError
from gateway.core.fields import Field

__all__ = [
    "SCD4x",
    "data_ready",
    "decode_measurement",
    "decode_serial",
    "decode_variant",
    "humidity_from_word",
    "temperature_from_word",
    "temperature_offset_word",
]

# --- protocol constants (SCD4x datasheet section 3, table 9) ------------------------------------

ADDRESS = 0x62

# command -> execution time in seconds (the wait between the write and a read or next command)
START_PERIODIC = 0x21B1
START_LOW_POWER_PERIODIC = 0x21AC
READ_MEASUREMENT = 0xEC05  # 1 ms; allowed while measuring
STOP_PERIODIC = 0x3F86  # 500 ms; allowed while measuring
SET_TEMPERATURE_OFFSET = 0x241D  # 1 ms
GET_TEMPERATURE_OFFSET = 0x2318
SET_ALTITUDE = 0x2427  # 1 ms
GET_ALTITUDE = 0x2322
SET_AMBIENT_PRESSURE = 0xE000  # 1 ms; allowed while measuring
SET_ASC_ENABLED = 0x2416  # 1 ms
GET_ASC_ENABLED = 0x2313
GET_DATA_READY = 0xE4B8  # 1 ms; allowed while measuring
GET_SERIAL_NUMBER = 0x3682  # 1 ms
GET_SENSOR_VARIANT = 0x202F  # 1 ms
MEASURE_SINGLE_SHOT = 0x219D  # 5000 ms; SCD41/43 only

T_COMMAND = 0.001
T_STOP = 0.5
T_SINGLE_SHOT = 5.0

PERIOD = {"periodic": 5.0, "low-power": 30.0}  # s between samples
READY_MARGIN = 1.5  # s beyond one period before "no data" is declared
POLLS_PER_PERIOD = 50

VARIANTS = {0: "scd40", 1: "scd41", 5: "scd43"}  # bits [15:12] of get_sensor_variant
SINGLE_SHOT_VARIANTS = ("scd41", "scd43")

PRESSURE_RANGE_PA = (70_000.0, 120_000.0)  # the chip accepts 700..1200 hPa


# --- pure decoding ------------------------------------------------------------------------------


def temperature_from_word(word: int) -> float:
    # T = -45 + 175 * word / (2^16 - 1)
    return -45.0 + 175.0 * word / 65535.0


def humidity_from_word(word: int) -> float:
    # RH = 100 * word / (2^16 - 1)
    return 100.0 * word / 65535.0


def temperature_offset_word(celsius: float) -> int:
    # word = T_offset * (2^16 - 1) / 175   (4 Cel, the default, -> 1498)
    return round(celsius * 65535.0 / 175.0)


def data_ready(word: int) -> bool:
    # ready <=> the 11 least significant bits are not all 0 (0x8000 means not ready)
    return word & 0x07FF != 0


def decode_measurement(data: bytes) -> tuple[int, float, float]:
    """(CO2 ppm, Cel, %RH) from the 9-byte answer to read_measurement; CRCError on a bad word."""
    co2, t, rh = unpack_words(data, 3)
    return co2, temperature_from_word(t), humidity_from_word(rh)


def decode_serial(data: bytes) -> int:
    """The 48-bit serial number from the 9-byte answer to get_serial_number."""
    w0, w1, w2 = unpack_words(data, 3)
    return (w0 << 32) | (w1 << 16) | w2


def decode_variant(data: bytes) -> str | None:
    """ "scd40", "scd41", "scd43" or None (unknown) from the answer to get_sensor_variant."""
    (word,) = unpack_words(data, 1)
    return VARIANTS.get(word >> 12)


def command(code: int, *args: int) -> bytes:
    """A command as written: 16-bit code MSB first, then each argument word with its CRC."""
    return code.to_bytes(2, "big") + pack_words(*args)


# --- the driver --------------------------------------------------------------------------------

_UNITS: Mapping[str, str] = manifests.SCD4X.units()  # from its manifest (drivers/manifests.py)


def _check(options: Mapping[str, Any]) -> list[str]:
    if options.get("mode") == "single-shot" and options.get("variant") == "scd40":
        return ['mode: "single-shot" needs an SCD41 or SCD43; the SCD40 measures periodically']
    return []


class SCD4x(I2CDriver):
    """An SCD40/41/43 in periodic, low-power periodic or single-shot mode."""

    name = "scd4x"
    default_interval = 30.0
    emulated_chip = "scd41"
    CONFIG: ClassVar[Mapping[str, Field]] = {
        "bus": BUS_FIELD,
        "address": Field(
            "int", "I2C address (every SCD4x answers at 0x62)", default=ADDRESS, choices=(ADDRESS,)
        ),
        "variant": Field(
            "str",
            'which part: "scd40", "scd41", "scd43", or "auto" to ask the chip',
            default="auto",
            choices=("auto", "scd40", "scd41", "scd43"),
        ),
        "mode": Field(
            "str",
            '"periodic" (a sample every 5 s), "low-power" (every 30 s) or "single-shot" '
            "(one 5 s measurement per read; SCD41/43 only, least power for long intervals)",
            default="periodic",
            choices=("periodic", "low-power", "single-shot"),
        ),
        "temperature_offset": Field(
            "float",
            "Cel the chip subtracts for its own heating in the enclosure (datasheet default 4)",
            default=4.0,
            min=0.0,
            max=20.0,
        ),
        "altitude": Field(
            "int",
            "metres above sea level, for pressure compensation until an ambient pressure arrives",
            default=0,
            min=0,
            max=3000,
        ),
        "pressure_compensation": Field(
            "bool",
            "compensate CO2 with the pressure another sensor on this gateway (e.g. a BME280) "
            "measures, sent before each read",
            default=True,
        ),
        "asc": Field(
            "bool",
            "automatic self-calibration: assumes the sensor sees fresh air (400 ppm) regularly; "
            "turn off indoors where it never does",
            default=True,
        ),
    }

    @classmethod
    def check_config(cls, options: Mapping[str, Any]) -> list[str]:
        """Rules spanning fields, for the config loader and the constructor."""
        return _check(options)

    def __init__(
        self,
        *,
        sensor_id: str,
        options: Mapping[str, Any],
        transport: I2CTransport | None = None,
    ) -> None:
        super().__init__(sensor_id=sensor_id, options=options, transport=transport)
        self.mode: str = self.options["mode"]
        self.variant: str | None = (
            None if self.options["variant"] == "auto" else self.options["variant"]
        )
        self.serial_number: int | None = None
        self._ambient_pa: float | None = None  # latest pressure from another sensor, Pa
        self._sent_hpa: int | None = None  # what the chip was last told, hPa
        self._discard_next = False

    def _chip_for_emulation(self) -> str:
        return self.variant or self.emulated_chip

    @property
    def quantities(self) -> Mapping[str, str]:
        return _UNITS

    @property
    def ambient_pressure_hpa(self) -> int | None:
        """The ambient pressure last sent to the chip, hPa."""
        return self._sent_hpa

    def ambient(self, quantity: str, value: float) -> None:
        # Called on the event loop: only store; read() sends it from the worker thread.
        if quantity == "pressure" and self.options["pressure_compensation"]:
            lo, hi = PRESSURE_RANGE_PA
            if lo <= value <= hi:
                self._ambient_pa = value

    # --- transfers ---

    def _send(self, code: int, *args: int, delay: float = T_COMMAND) -> None:
        self.transport.command(command(code, *args), delay=delay)

    def _query(self, code: int, words: int, delay: float = T_COMMAND) -> bytes:
        return self.transport.command(command(code), delay=delay, length=3 * words)

    # --- open ---

    def setup(self) -> None:
        t = self.transport
        self._sent_hpa = None
        # A chip left measuring NACKs configuration commands: stop it first and wait 500 ms.
        self._send(STOP_PERIODIC, delay=T_STOP)
        try:
            self.serial_number = decode_serial(self._query(GET_SERIAL_NUMBER, 3))
        except CRCError as exc:
            self.counters["crc"] += 1
            raise SensorError(f"{t.label}: serial number: {exc}") from None
        self._check_variant()
        self._send(
            SET_TEMPERATURE_OFFSET, temperature_offset_word(self.options["temperature_offset"])
        )
        self._send(SET_ALTITUDE, int(self.options["altitude"]))
        self._send_pressure()
        self._send(SET_ASC_ENABLED, 1 if self.options["asc"] else 0)
        if self.mode == "periodic":
            self._send(START_PERIODIC, delay=0.0)
        elif self.mode == "low-power":
            self._send(START_LOW_POWER_PERIODIC, delay=0.0)
        else:
            self._discard_next = True  # the first single shot after power-up is not valid

    def _check_variant(self) -> None:
        t = self.transport
        wanted = self.options["variant"]
        try:
            found = decode_variant(self._query(GET_SENSOR_VARIANT, 1))
        except CRCError as exc:
            self.counters["crc"] += 1
            raise SensorError(f"{t.label}: sensor variant: {exc}") from None
        except SensorError:
            # Older firmware does not know the command: trust the configuration.
            found = None
        if wanted != "auto" and found is not None and found != wanted:
            raise SensorError(
                f"{t.label}: the chip reports an {found.upper()}, configured as {wanted.upper()}"
            )
        variant = found or (None if wanted == "auto" else wanted)
        self.variant = variant
        if self.mode == "single-shot" and variant not in SINGLE_SHOT_VARIANTS:
            raise SensorError(
                f"{t.label}: single-shot mode needs an SCD41 or SCD43, this is "
                f"{(variant or 'an unknown variant').upper()}"
            )

    def _send_pressure(self) -> None:
        pa = self._ambient_pa
        if pa is None:
            return
        hpa = round(pa / 100.0)
        if hpa != self._sent_hpa:
            # set_ambient_pressure takes hPa (700..1200) and overrides the altitude
            self._send(SET_AMBIENT_PRESSURE, hpa)
            self._sent_hpa = hpa

    # --- read ---

    def _wait_ready(self) -> None:
        t = self.transport
        period = PERIOD.get(self.mode, T_SINGLE_SHOT)
        step = period / POLLS_PER_PERIOD
        waited = 0.0
        while True:
            (word,) = self._words(self._query(GET_DATA_READY, 1), "data ready")
            if data_ready(word):
                return
            if waited >= period + READY_MARGIN:
                self.counters["not_ready"] += 1
                raise SensorError(f"{t.label}: no new measurement within {waited:.1f} s")
            t.wait(step)
            waited += step

    def _words(self, data: bytes, what: str) -> tuple[int, ...]:
        try:
            return unpack_words(data)
        except CRCError as exc:
            self.counters["crc"] += 1
            raise SensorError(f"{self.transport.label}: {what}: {exc}; discarded") from None

    def _measure_once(self) -> tuple[int, float, float]:
        if self.mode == "single-shot":
            self._send(MEASURE_SINGLE_SHOT, delay=T_SINGLE_SHOT)
        self._wait_ready()
        data = self._query(READ_MEASUREMENT, 3)
        try:
            return decode_measurement(data)
        except CRCError as exc:
            self.counters["crc"] += 1
            raise SensorError(f"{self.transport.label}: measurement: {exc}; discarded") from None

    def read(self, now: float) -> list[Measurement]:
        self._send_pressure()
        if self._discard_next:
            self._measure_once()
            self._discard_next = False
        co2, temperature, humidity = self._measure_once()
        return [
            Measurement("co2", float(co2)),
            Measurement("temperature", round(temperature, 3)),
            Measurement("humidity", round(humidity, 3)),
        ]


def __getattr__(name: str) -> str:
    # SAMPLE_CONFIG, the sample's text (drivers/scd4x.sample.toml), read when asked for (tests,
    # docs) rather than at every import of the driver
    if name == "SAMPLE_CONFIG":
        return manifests.SCD4X.sample_text()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
