"""A byte-level BME280 (or BMP280) behind the emulated I2C bus.

A 256-byte register file with the chip's behaviour: calibration in NVM (copied at power-up and
soft reset, with `im_update` set meanwhile), ctrl_hum latched by the next ctrl_meas write,
forced mode that measures for the datasheet's typical time and returns to sleep, normal mode,
skipped channels reading 0x80000 / 0x8000, the measuring bit that sets only shortly after the
trigger, and register writes as (address, value) pairs.

Raw ADC values are found by inverting the datasheet's *double* compensation formulas with the
emulator's own calibration, so decoding the registers with the driver's integer formulas
recovers the air's values within a few LSB. The default calibration looks like a real part's
and has negative H4 and H5, which a decoder that reads their high bytes unsigned gets wrong.

Fault modes besides the common ones: `stick()` (a measurement that never completes) and
`force_adc()` (fixed raw values, for datasheet vectors).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from typing import Any, ClassVar

from drivers.emulators.i2c import Air, Clock, I2CEmulator

__all__ = [
    "DEFAULT_CALIBRATION",
    "BME280Emulator",
    "calibration_registers",
    "double_humidity",
    "double_pressure",
    "double_temperature",
]

#: a real-looking trimming set (T and P of the Bosch datasheet example) with negative H4/H5
DEFAULT_CALIBRATION: Mapping[str, int] = {
    "T1": 27504,
    "T2": 26435,
    "T3": -1000,
    "P1": 36477,
    "P2": -10685,
    "P3": 3024,
    "P4": 2855,
    "P5": 140,
    "P6": -7,
    "P7": 15500,
    "P8": -14600,
    "P9": 6000,
    "H1": 75,
    "H2": 362,
    "H3": 0,
    "H4": -12,
    "H5": -30,
    "H6": 30,
}


def calibration_registers(cal: Mapping[str, int]) -> dict[int, bytes]:
    """The NVM image of a calibration set: {0x88: 26 bytes, 0xE1: 7 bytes}."""
    tp = struct.pack(
        "<HhhHhhhhhhhh",
        *(cal[k] for k in ("T1", "T2", "T3", "P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9")),
    )
    tp += bytes((0x00, cal.get("H1", 0) & 0xFF))  # 0xA0 unused, 0xA1 H1
    h4, h5 = cal.get("H4", 0), cal.get("H5", 0)
    h = struct.pack("<h", cal.get("H2", 0)) + bytes(
        (
            cal.get("H3", 0) & 0xFF,  # 0xE3
            (h4 >> 4) & 0xFF,  # 0xE4: H4[11:4]
            (h4 & 0x0F) | ((h5 & 0x0F) << 4),  # 0xE5: H5[3:0] H4[3:0]
            (h5 >> 4) & 0xFF,  # 0xE6: H5[11:4]
            cal.get("H6", 0) & 0xFF,  # 0xE7
        )
    )
    return {0x88: tp, 0xE1: h}


# --- the datasheet's double formulas (appendix 8.1), the emulator's own copy --------------------


def double_temperature(adc_t: int, cal: Mapping[str, int]) -> tuple[float, int]:
    """(Cel, t_fine); t_fine is truncated to an integer as in the datasheet."""
    var1 = (adc_t / 16384.0 - cal["T1"] / 1024.0) * cal["T2"]
    var2 = (adc_t / 131072.0 - cal["T1"] / 8192.0) ** 2 * cal["T3"]
    return (var1 + var2) / 5120.0, int(var1 + var2)


def double_pressure(adc_p: int, t_fine: int, cal: Mapping[str, int]) -> float:
    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * cal["P6"] / 32768.0
    var2 = var2 + var1 * cal["P5"] * 2.0
    var2 = var2 / 4.0 + cal["P4"] * 65536.0
    var1 = (cal["P3"] * var1 * var1 / 524288.0 + cal["P2"] * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * cal["P1"]
    if var1 == 0.0:
        return 0.0
    p = 1048576.0 - adc_p
    p = (p - var2 / 4096.0) * 6250.0 / var1
    var1 = cal["P9"] * p * p / 2147483648.0
    var2 = p * cal["P8"] / 32768.0
    return p + (var1 + var2 + cal["P7"]) / 16.0


def double_humidity(adc_h: int, t_fine: int, cal: Mapping[str, int]) -> float:
    var_h = t_fine - 76800.0
    var_h = (adc_h - (cal["H4"] * 64.0 + cal["H5"] / 16384.0 * var_h)) * (
        cal["H2"]
        / 65536.0
        * (1.0 + cal["H6"] / 67108864.0 * var_h * (1.0 + cal["H3"] / 67108864.0 * var_h))
    )
    var_h = var_h * (1.0 - cal["H1"] * var_h / 524288.0)
    return min(100.0, max(0.0, var_h))


def _invert(f: Any, target: float, lo: int, hi: int, *, increasing: bool) -> int:
    """The integer x in [lo, hi] whose f(x) is closest to target, f monotonic."""
    sign = 1.0 if increasing else -1.0
    a, b = lo, hi
    while a < b:
        mid = (a + b) // 2
        if sign * f(mid) < sign * target:
            a = mid + 1
        else:
            b = mid
    best = a
    if a > lo and abs(f(a - 1) - target) < abs(f(a) - target):
        best = a - 1
    return best


# --- the chip ----------------------------------------------------------------------------------

_OSRS_FACTOR = (0, 1, 2, 4, 8, 16, 16, 16)


class BME280Emulator(I2CEmulator):
    chip: ClassVar[str] = "bme280"

    def __init__(
        self,
        *,
        address: int = 0x76,
        chip_id: int = 0x60,
        calibration: Mapping[str, int] | None = None,
        nvm: Mapping[int, bytes] | None = None,
        clock: Clock | None = None,
        air: Air | None = None,
        seed: int = 0,
    ) -> None:
        self.chip_id = chip_id
        self.humidity = chip_id == 0x60
        self.calibration: dict[str, int] = dict(calibration or DEFAULT_CALIBRATION)
        # NVM image; `nvm` overrides raw bytes (e.g. a datasheet's register dump)
        self.nvm = calibration_registers(self.calibration)
        if nvm:
            self.nvm.update(nvm)
        self.stuck = False
        self.forced_adc: dict[str, int] = {}
        self.measurements = 0
        self.writes: list[tuple[int, int]] = []  # (register, value) as written
        super().__init__(address=address, clock=clock, air=air, seed=seed)

    # --- fault modes and test hooks ---

    def stick(self, stuck: bool = True) -> None:
        """A measurement that never completes: the mode bits stay forced, measuring stays set."""
        self.stuck = stuck

    def force_adc(self, **raw: int) -> None:
        """Serve fixed raw ADC values (t, p, h) instead of measuring the air."""
        self.forced_adc.update(raw)

    # --- power and registers ---

    def power_on(self) -> None:
        self.regs = bytearray(256)
        self.regs[0xD0] = self.chip_id
        for start, image in self.nvm.items():
            if start == 0xE1 and not self.humidity:
                continue
            self.regs[start : start + len(image)] = image
        self.regs[0xF7:0xFF] = bytes((0x80, 0, 0, 0x80, 0, 0, 0x80, 0))
        if not self.humidity:
            self.regs[0xFD:0xFF] = b"\x00\x00"
        self.pointer = 0
        self.osrs_h_active = 0
        self.nvm_until = self.clock.now() + 0.002  # im_update while the NVM is copied
        self.started_at: float | None = None
        self.done_at: float | None = None
        self.next_normal: float | None = None

    def _status(self) -> int:
        now = self.clock.now()
        status = 0
        if now < self.nvm_until:
            status |= 0x01
        # the measuring bit rises about 0.5 ms after the trigger
        if self.started_at is not None and now >= self.started_at + 0.0005:
            status |= 0x08
        return status

    def _tick(self) -> None:
        now = self.clock.now()
        mode = self.regs[0xF4] & 0x03
        if self.done_at is not None and now >= self.done_at and not self.stuck:
            self._measure()
            self.started_at = self.done_at = None
            if mode in (0x01, 0x02):
                self.regs[0xF4] &= 0xFC  # forced mode returns to sleep
        if mode == 0x03 and self.next_normal is not None and now >= self.next_normal:
            self._measure()
            self.next_normal = now + self._t_meas() + 0.001

    def _t_meas(self) -> float:
        """Typical measurement time: 1 + 2*T + (2*P + 0.5) + (2*H + 0.5) ms."""
        t = _OSRS_FACTOR[(self.regs[0xF4] >> 5) & 7]
        p = _OSRS_FACTOR[(self.regs[0xF4] >> 2) & 7]
        h = _OSRS_FACTOR[self.osrs_h_active & 7] if self.humidity else 0
        ms = 1.0 + 2.0 * t + (2.0 * p + 0.5 if p else 0.0) + (2.0 * h + 0.5 if h else 0.0)
        return ms / 1000.0

    def on_write(self, data: bytes) -> None:
        self._tick()
        if len(data) == 1:
            self.pointer = data[0]
            return
        for i in range(0, len(data) - 1, 2):
            self._write_register(data[i], data[i + 1])
        if len(data) % 2:
            self.pointer = data[-1]

    def _write_register(self, reg: int, value: int) -> None:
        self.writes.append((reg, value))
        now = self.clock.now()
        if reg == 0xE0:
            if value == 0xB6:
                self.power_on()
            return
        if reg == 0xF2 and self.humidity:
            self.regs[0xF2] = value & 0x07
        elif reg == 0xF4:
            self.regs[0xF4] = value
            self.osrs_h_active = self.regs[0xF2] & 0x07  # ctrl_hum latches here
            mode = value & 0x03
            if mode in (0x01, 0x02):
                self.started_at = now
                self.done_at = now + self._t_meas()
            elif mode == 0x03:
                self.next_normal = now + self._t_meas()
            else:
                self.started_at = self.done_at = self.next_normal = None
        elif reg == 0xF5 and self.regs[0xF4] & 0x03 != 0x03:  # ignored in normal mode
            self.regs[0xF5] = value & 0xFD
        # every other register is read-only

    def on_read(self, length: int) -> bytes:
        self._tick()
        out = bytearray()
        for i in range(length):
            reg = (self.pointer + i) & 0xFF
            if reg == 0xF3:
                out.append(self._status())
            elif reg == 0xF4 and self.done_at is not None:
                out.append(self.regs[0xF4])  # mode bits still read forced while measuring
            else:
                out.append(self.regs[reg])
        return bytes(out)

    # --- measuring ---

    def _measure(self) -> None:
        self.measurements += 1
        osrs_t = (self.regs[0xF4] >> 5) & 7
        osrs_p = (self.regs[0xF4] >> 2) & 7
        osrs_h = self.osrs_h_active if self.humidity else 0
        air = self.air.sample()
        cal = self.calibration
        if osrs_t:
            adc_t = self.forced_adc.get("t")
            if adc_t is None:
                adc_t = _invert(
                    lambda x: double_temperature(x, cal)[0],
                    air.temperature,
                    0,
                    (1 << 20) - 1,
                    increasing=True,
                )
                adc_t = self._resolution(adc_t, osrs_t)
        else:
            adc_t = 0x80000
        t_fine = double_temperature(adc_t, cal)[1]
        if osrs_p:
            adc_p = self.forced_adc.get("p")
            if adc_p is None:
                adc_p = _invert(
                    lambda x: double_pressure(x, t_fine, cal),
                    air.pressure,
                    0,
                    (1 << 20) - 1,
                    increasing=False,
                )
                adc_p = self._resolution(adc_p, osrs_p)
        else:
            adc_p = 0x80000
        self.regs[0xF7:0xFA] = bytes((adc_p >> 12, (adc_p >> 4) & 0xFF, (adc_p & 0x0F) << 4))
        self.regs[0xFA:0xFD] = bytes((adc_t >> 12, (adc_t >> 4) & 0xFF, (adc_t & 0x0F) << 4))
        if self.humidity:
            if osrs_h:
                adc_h = self.forced_adc.get("h")
                if adc_h is None:
                    adc_h = _invert(
                        lambda x: double_humidity(x, t_fine, cal),
                        min(100.0, max(0.0, air.humidity)),
                        0,
                        0xFFFF,
                        increasing=True,
                    )
            else:
                adc_h = 0x8000
            self.regs[0xFD:0xFF] = bytes((adc_h >> 8, adc_h & 0xFF))

    @staticmethod
    def _resolution(adc: int, osrs: int) -> int:
        """20-bit ADC values carry 16 + (osrs - 1) significant bits with the filter off."""
        bits = min(20, 16 + _OSRS_FACTOR[osrs].bit_length() - 1)
        step = 1 << (20 - bits)
        return min((1 << 20) - step, math.floor(adc / step + 0.5) * step)
