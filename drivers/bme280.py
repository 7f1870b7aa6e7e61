"""Bosch BME280 temperature, humidity and pressure sensor on I2C, and the BMP280 sold as one.

Each read triggers one forced-mode measurement, sleeps the datasheet's maximum measurement time,
confirms the chip is back in sleep mode (the measuring bit alone can still read 0 right after
the trigger, which returns the previous sample) and burst-reads the data registers, so the
values of one read come from one measurement. Forced mode, x1 oversampling and the filter off
avoid the self-heating of normal mode.

Compensation uses the datasheet's integer formulas (BME280 datasheet section 4.2.3 / appendix
8.2: int32 temperature, int64 pressure, int32 humidity): bit-exact on every platform, and the
results are the datasheet's own fixed-point values (0.01 Cel, Q24.8 Pa, Q22.10 %RH). The double
formulas (appendix 8.1) serve as the independent reference in the tests and the emulator.

A BMP280 (chip id 0x58) has no humidity: with `model = "auto"` the driver then runs without it,
drops humidity from its quantities, logs it once and notes `no_humidity` in its counters.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from drivers import manifests
from drivers.base import Measurement
from drivers.i2c_bus import BUS_FIELD, I2CDriver, I2CTransport
from gateway.core.errors import SensorError
from gateway.core.fields import Field

__all__ = [
    "BME280",
    "Calibration",
    "Sample",
    "compensate_humidity",
    "compensate_pressure",
    "compensate_temperature",
    "decode_calibration",
    "decode_measurement",
    "measurement_time_ms",
]

log = logging.getLogger(__name__)

# --- protocol constants and register map (BME280 datasheet section 5.3) ------------------------

ADDRESSES = (0x76, 0x77)  # SDO to GND / SDO to VDDIO
CHIP_ID_BME280 = 0x60
CHIP_ID_BMP280 = 0x58

REG_CALIB_TP = 0x88  # 0x88..0x9F T1..P9 (little-endian), 0xA0 unused, 0xA1 H1
CALIB_TP_LENGTH = 26
REG_CHIP_ID = 0xD0
REG_RESET = 0xE0  # write RESET_WORD: power-on reset
RESET_WORD = 0xB6
REG_CALIB_H = 0xE1  # 0xE1..0xE7: H2 (s16), H3 (u8), H4/H5 (12-bit signed, nibble-shared), H6 (s8)
CALIB_H_LENGTH = 7
REG_CTRL_HUM = 0xF2  # [2:0] osrs_h; takes effect only after the next write to ctrl_meas
REG_STATUS = 0xF3  # bit 3 measuring, bit 0 im_update (NVM being copied)
REG_CTRL_MEAS = 0xF4  # [7:5] osrs_t, [4:2] osrs_p, [1:0] mode
REG_CONFIG = 0xF5  # [7:5] t_sb, [4:2] IIR filter, [0] spi3w_en; write in sleep mode only
REG_DATA = 0xF7  # press msb/lsb/xlsb, temp msb/lsb/xlsb, hum msb/lsb
DATA_LENGTH = 8  # BMP280: 6 (no humidity)

STATUS_MEASURING = 0x08
STATUS_IM_UPDATE = 0x01
MODE_MASK = 0x03
MODE_SLEEP = 0x00
MODE_FORCED = 0x01

#: oversampling factor -> osrs code (0 = channel skipped)
OSRS = {0: 0, 1: 1, 2: 2, 4: 3, 8: 4, 16: 5}

# A skipped channel (or one never measured since reset) reads 0x80000 (T, P) / 0x8000 (H).
SKIPPED_20 = 0x80000
SKIPPED_16 = 0x8000

RESET_WAIT = 0.002  # s; the Bosch API polls im_update 5 x 2 ms
RESET_POLLS = 5
DONE_POLLS = 10  # after t_max, poll the mode bits this many times, 1 ms apart
HUMIDITY_MAX_Q10 = 419430400 >> 12  # 100 %RH in Q22.10, the datasheet's clamp


# --- pure decoding ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Calibration:
    """Trimming parameters from the chip's NVM (the H* are 0 on a BMP280)."""

    T1: int
    T2: int
    T3: int
    P1: int
    P2: int
    P3: int
    P4: int
    P5: int
    P6: int
    P7: int
    P8: int
    P9: int
    H1: int = 0
    H2: int = 0
    H3: int = 0
    H4: int = 0
    H5: int = 0
    H6: int = 0
    humidity: bool = False


def _s8(byte: int) -> int:
    return byte - 256 if byte & 0x80 else byte


def decode_calibration(tp: bytes, h: bytes | None = None) -> Calibration:
    """Calibration from the register images at 0x88 (26 bytes) and, for a BME280, 0xE1 (7).

    H4 and H5 are 12-bit signed values sharing register 0xE5: H4 = s8(E4)*16 | E5[3:0] and
    H5 = s8(E6)*16 | E5[7:4]. The sign comes from the *high* byte: reading E4/E6 unsigned turns
    a negative H4/H5 into a large positive one (the bug a well-known library shipped for years).
    """
    if len(tp) != CALIB_TP_LENGTH:
        raise ValueError(f"expected {CALIB_TP_LENGTH} calibration bytes at 0x88, got {len(tp)}")
    t1, t2, t3, p1, p2, p3, p4, p5, p6, p7, p8, p9 = struct.unpack_from("<HhhHhhhhhhhh", tp)
    if h is None:
        return Calibration(t1, t2, t3, p1, p2, p3, p4, p5, p6, p7, p8, p9)
    if len(h) != CALIB_H_LENGTH:
        raise ValueError(f"expected {CALIB_H_LENGTH} calibration bytes at 0xE1, got {len(h)}")
    h1 = tp[25]  # 0xA1
    (h2,) = struct.unpack_from("<h", h, 0)  # 0xE1/0xE2
    h3 = h[2]  # 0xE3
    h4 = (_s8(h[3]) << 4) | (h[4] & 0x0F)  # 0xE4[7:0] = H4[11:4], 0xE5[3:0] = H4[3:0]
    h5 = (_s8(h[5]) << 4) | (h[4] >> 4)  # 0xE6[7:0] = H5[11:4], 0xE5[7:4] = H5[3:0]
    h6 = _s8(h[6])  # 0xE7
    return Calibration(
        t1, t2, t3, p1, p2, p3, p4, p5, p6, p7, p8, p9, h1, h2, h3, h4, h5, h6, humidity=True
    )


def compensate_temperature(adc_t: int, cal: Calibration) -> tuple[int, int]:
    """(temperature in 0.01 Cel, t_fine) by the datasheet's int32 formula."""
    # var1 = ((((adc_T>>3) - ((BME280_S32_t)dig_T1<<1))) * ((BME280_S32_t)dig_T2)) >> 11;
    var1 = (((adc_t >> 3) - (cal.T1 << 1)) * cal.T2) >> 11
    # var2 = (((((adc_T>>4) - ((BME280_S32_t)dig_T1)) * ((adc_T>>4) - ((BME280_S32_t)dig_T1)))
    #          >> 12) * ((BME280_S32_t)dig_T3)) >> 14;
    var2 = (((((adc_t >> 4) - cal.T1) * ((adc_t >> 4) - cal.T1)) >> 12) * cal.T3) >> 14
    t_fine = var1 + var2
    # T = (t_fine * 5 + 128) >> 8;
    return (t_fine * 5 + 128) >> 8, t_fine


def _div_trunc(a: int, b: int) -> int:
    """C's integer division (truncates toward zero; Python's // floors)."""
    q = abs(a) // abs(b)
    return q if (a >= 0) == (b >= 0) else -q


def compensate_pressure(adc_p: int, t_fine: int, cal: Calibration) -> int:
    """Pressure in Pa as Q24.8 (divide by 256) by the datasheet's int64 formula; 0 when the
    calibration would divide by zero."""
    # var1 = ((BME280_S64_t)t_fine) - 128000;
    var1 = t_fine - 128000
    # var2 = var1 * var1 * (BME280_S64_t)dig_P6;
    var2 = var1 * var1 * cal.P6
    # var2 = var2 + ((var1*(BME280_S64_t)dig_P5)<<17);
    var2 = var2 + ((var1 * cal.P5) << 17)
    # var2 = var2 + (((BME280_S64_t)dig_P4)<<35);
    var2 = var2 + (cal.P4 << 35)
    # var1 = ((var1 * var1 * (BME280_S64_t)dig_P3)>>8) + ((var1 * (BME280_S64_t)dig_P2)<<12);
    var1 = ((var1 * var1 * cal.P3) >> 8) + ((var1 * cal.P2) << 12)
    # var1 = (((((BME280_S64_t)1)<<47)+var1))*((BME280_S64_t)dig_P1)>>33;
    var1 = (((1 << 47) + var1) * cal.P1) >> 33
    if var1 == 0:
        return 0  # avoid a division by zero
    # p = 1048576-adc_P;
    p = 1048576 - adc_p
    # p = (((p<<31)-var2)*3125)/var1;
    p = _div_trunc(((p << 31) - var2) * 3125, var1)
    # var1 = (((BME280_S64_t)dig_P9) * (p>>13) * (p>>13)) >> 25;
    var1 = (cal.P9 * (p >> 13) * (p >> 13)) >> 25
    # var2 = (((BME280_S64_t)dig_P8) * p) >> 19;
    var2 = (cal.P8 * p) >> 19
    # p = ((p + var1 + var2) >> 8) + (((BME280_S64_t)dig_P7)<<4);
    return ((p + var1 + var2) >> 8) + (cal.P7 << 4)


def compensate_humidity(adc_h: int, t_fine: int, cal: Calibration) -> int:
    """Relative humidity as Q22.10 %RH (divide by 1024), clamped to 0..100 by the datasheet's
    int32 formula."""
    # v_x1_u32r = (t_fine - ((BME280_S32_t)76800));
    v = t_fine - 76800
    # v_x1_u32r = (((((adc_H << 14) - (((BME280_S32_t)dig_H4) << 20) - (((BME280_S32_t)dig_H5) *
    #   v_x1_u32r)) + ((BME280_S32_t)16384)) >> 15) * (((((((v_x1_u32r *
    #   ((BME280_S32_t)dig_H6)) >> 10) * (((v_x1_u32r * ((BME280_S32_t)dig_H3)) >> 11) +
    #   ((BME280_S32_t)32768))) >> 10) + ((BME280_S32_t)2097152)) * ((BME280_S32_t)dig_H2) +
    #   8192) >> 14));
    v = ((((adc_h << 14) - (cal.H4 << 20) - (cal.H5 * v)) + 16384) >> 15) * (
        (
            ((((((v * cal.H6) >> 10) * (((v * cal.H3) >> 11) + 32768)) >> 10) + 2097152) * cal.H2)
            + 8192
        )
        >> 14
    )
    # v_x1_u32r = (v_x1_u32r - (((((v_x1_u32r >> 15) * (v_x1_u32r >> 15)) >> 7) *
    #   ((BME280_S32_t)dig_H1)) >> 4));
    v = v - (((((v >> 15) * (v >> 15)) >> 7) * cal.H1) >> 4)
    # v_x1_u32r = (v_x1_u32r < 0 ? 0 : v_x1_u32r);
    # v_x1_u32r = (v_x1_u32r > 419430400 ? 419430400 : v_x1_u32r);
    v = min(max(v, 0), 419430400)
    # return (BME280_U32_t)(v_x1_u32r>>12);
    return v >> 12


@dataclass(frozen=True, slots=True)
class Sample:
    temperature: float  # Cel
    pressure: float  # Pa
    humidity: float | None  # %RH; None without humidity (BMP280, or skipped)
    humidity_clipped: bool = False  # the datasheet formula clamped it to 0 or 100


def decode_adc(data: bytes) -> tuple[int, int, int | None]:
    """(adc_P, adc_T, adc_H or None) from the burst read at 0xF7 (8 bytes, or 6 on a BMP280):
    P and T are msb<<12 | lsb<<4 | xlsb>>4 (20 bits), H is msb<<8 | lsb."""
    if len(data) not in (6, DATA_LENGTH):
        raise ValueError(f"expected 6 or 8 data bytes at 0xF7, got {len(data)}")
    adc_p = (data[0] << 12) | (data[1] << 4) | (data[2] >> 4)
    adc_t = (data[3] << 12) | (data[4] << 4) | (data[5] >> 4)
    adc_h = (data[6] << 8) | data[7] if len(data) == DATA_LENGTH else None
    return adc_p, adc_t, adc_h


def decode_measurement(data: bytes, cal: Calibration) -> Sample:
    """Physical values from the data registers and the calibration. Raises ValueError when a
    channel holds the "not measured" marker (skipped, or no measurement since reset)."""
    adc_p, adc_t, adc_h = decode_adc(data)
    if adc_t == SKIPPED_20:
        raise ValueError("temperature was not measured (0x80000)")
    if adc_p == SKIPPED_20:
        raise ValueError("pressure was not measured (0x80000)")
    centi, t_fine = compensate_temperature(adc_t, cal)
    pressure_q8 = compensate_pressure(adc_p, t_fine, cal)
    if pressure_q8 == 0:
        raise ValueError("pressure compensation divides by zero: calibration data is invalid")
    humidity: float | None = None
    clipped = False
    if adc_h is not None and cal.humidity:
        if adc_h == SKIPPED_16:
            raise ValueError("humidity was not measured (0x8000)")
        q10 = compensate_humidity(adc_h, t_fine, cal)
        clipped = q10 in (0, HUMIDITY_MAX_Q10)
        humidity = round(q10 / 1024.0, 3)  # 1/1024 %RH steps
    return Sample(centi / 100.0, round(pressure_q8 / 256.0, 2), humidity, clipped)  # 1/256 Pa


def measurement_time_ms(t: int, p: int, h: int) -> float:
    """Maximum forced-mode measurement time in ms for oversampling factors t, p, h (0 skips):
    t_max = 1.25 + 2.3*T + (2.3*P + 0.575) + (2.3*H + 0.575) (datasheet section 9.1)."""
    ms = 1.25 + 2.3 * t
    if p:
        ms += 2.3 * p + 0.575
    if h:
        ms += 2.3 * h + 0.575
    return ms


# --- the driver --------------------------------------------------------------------------------

# what it reports, from its manifest (drivers/manifests.py)
_ALL_UNITS: Mapping[str, str] = manifests.BME280.units()
_NO_HUMIDITY: Mapping[str, str] = {q: u for q, u in _ALL_UNITS.items() if q != "humidity"}


class BME280(I2CDriver):
    """A BME280 (or BMP280) in forced mode."""

    name = "bme280"
    default_interval = 60.0
    emulated_chip = "bme280"
    CONFIG: ClassVar[Mapping[str, Field]] = {
        "bus": BUS_FIELD,
        "address": Field(
            "int",
            "I2C address: 0x76 (SDO to GND, most breakout boards) or 0x77 (SDO to 3V3)",
            default=0x76,
            choices=ADDRESSES,
        ),
        "model": Field(
            "str",
            'which chip to expect: "auto" (a BMP280 runs without humidity), "bme280" (a BMP280 '
            'is an error) or "bmp280" (temperature and pressure only)',
            default="auto",
            choices=("auto", "bme280", "bmp280"),
        ),
        "oversampling": Field(
            "int",
            "oversampling of every channel (1, 2, 4, 8, 16): more is less noisy, slower, warmer",
            default=1,
            choices=(1, 2, 4, 8, 16),
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
        self.model: str = self.options["model"]
        self._humidity: bool = self.model != "bmp280"
        self._calibration: Calibration | None = None
        self.chip_id: int | None = None
        os_factor = int(self.options["oversampling"])
        self._osrs = OSRS[os_factor]

    def _chip_for_emulation(self) -> str:
        return "bmp280" if self.model == "bmp280" else "bme280"

    @property
    def quantities(self) -> Mapping[str, str]:
        return _ALL_UNITS if self._humidity else _NO_HUMIDITY

    @property
    def has_humidity(self) -> bool:
        return self._humidity

    def setup(self) -> None:
        t = self.transport
        chip_id = t.read_register(REG_CHIP_ID, 1)[0]
        if chip_id not in (CHIP_ID_BME280, CHIP_ID_BMP280):
            raise SensorError(
                f"{t.label}: chip id 0x{chip_id:02x} is neither a BME280 (0x60) nor a BMP280 (0x58)"
            )
        if chip_id == CHIP_ID_BMP280 and self.model == "bme280":
            raise SensorError(
                f"{t.label}: chip id 0x58 is a BMP280, which has no humidity sensor; set "
                'model = "bmp280" (or "auto")'
            )
        self.chip_id = chip_id
        if chip_id == CHIP_ID_BMP280 and self._humidity:
            self._humidity = False
            self.counters["no_humidity"] = 1
            log.warning(
                "sensor %s: %s answers with chip id 0x58, a BMP280: running without humidity",
                self.sensor_id,
                t.label,
            )
        # Power-on reset, then wait for the NVM copy (im_update) to finish.
        t.write_register(REG_RESET, RESET_WORD)
        for _ in range(RESET_POLLS):
            t.wait(RESET_WAIT)
            if not t.read_register(REG_STATUS, 1)[0] & STATUS_IM_UPDATE:
                break
        else:
            raise SensorError(f"{t.label}: still copying its calibration after the reset")
        tp = t.read_register(REG_CALIB_TP, CALIB_TP_LENGTH)
        h = t.read_register(REG_CALIB_H, CALIB_H_LENGTH) if chip_id == CHIP_ID_BME280 else None
        cal = decode_calibration(tp, h)
        if cal.T1 == 0 or cal.P1 == 0 or tp == b"\xff" * len(tp):
            raise SensorError(f"{t.label}: calibration data reads as blank ({tp.hex()})")
        self._calibration = cal
        # IIR filter off, standby irrelevant in forced mode; written while in sleep mode.
        t.write_register(REG_CONFIG, 0x00)

    def read(self, now: float) -> list[Measurement]:
        t = self.transport
        cal = self._calibration
        if cal is None:
            raise SensorError(f"sensor {self.sensor_id!r} is not open")
        osrs = self._osrs
        humidity = self._humidity and cal.humidity
        if self.chip_id == CHIP_ID_BME280:
            # ctrl_hum takes effect with the ctrl_meas write that follows.
            t.write_register(REG_CTRL_HUM, osrs if humidity else 0)
        # Forced mode must be triggered for every read, or the values freeze.
        t.write_register(REG_CTRL_MEAS, (osrs << 5) | (osrs << 2) | MODE_FORCED)
        factor = int(self.options["oversampling"])
        t.wait(measurement_time_ms(factor, factor, factor if humidity else 0) / 1000.0)
        for _ in range(DONE_POLLS):
            status, ctrl = t.read_register(REG_STATUS, 2)
            if not status & STATUS_MEASURING and ctrl & MODE_MASK == MODE_SLEEP:
                break
            t.wait(0.001)
        else:
            self.counters["not_ready"] += 1
            raise SensorError(f"{t.label}: measurement did not complete")
        length = DATA_LENGTH if self.chip_id == CHIP_ID_BME280 else 6
        data = t.read_register(REG_DATA, length)
        try:
            sample = decode_measurement(data, cal)
        except ValueError as exc:
            self.counters["invalid"] += 1
            raise SensorError(f"{t.label}: {exc}") from None
        out = [Measurement("temperature", sample.temperature)]
        if humidity:
            if sample.humidity_clipped:
                self.counters["clipped"] += 1
                out.append(Measurement("humidity", sample.humidity, ("clipped",)))
            else:
                out.append(Measurement("humidity", sample.humidity))
        out.append(Measurement("pressure", sample.pressure))
        return out


def __getattr__(name: str) -> str:
    # SAMPLE_CONFIG, the sample's text (drivers/bme280.sample.toml), read when asked for (tests,
    # docs) rather than at every import of the driver
    if name == "SAMPLE_CONFIG":
        return manifests.BME280.sample_text()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
