"""A byte-level SHT4x behind the emulated I2C bus.

One-byte commands; a measurement takes the datasheet's maximum time for its precision (8.3 /
4.5 / 1.6 ms), and reading before it is done, or reading with nothing to read, is NACKed, as the
chip does. Heater commands heat for 1 s or 0.1 s and then measure the heated sensor.

Creep: while the air stays above 95 %RH the humidity reading drifts upward (up to +4 %RH, so it
can pass 100 and exercise clipping), and heater pulses drive the drift back out.

Fault modes besides the common ones: `corrupt(n)` (a flipped data bit in the next n answers),
`silence()` (the chip ACKs commands but never has data: every read NACKs).
"""

from __future__ import annotations

import math
from random import Random
from typing import ClassVar

from drivers.emulators.i2c import Air, Clock, I2CEmulator, Nack, sensirion_words

__all__ = ["SHT4xEmulator"]

#: command -> (measurement time s, heater power mW, heater time s)
MEASURE = {0xFD: (0.0083, 0, 0.0), 0xF6: (0.0045, 0, 0.0), 0xE0: (0.0016, 0, 0.0)}
HEATER = {
    0x39: (0.0083, 200, 1.0),
    0x32: (0.0083, 200, 0.1),
    0x2F: (0.0083, 110, 1.0),
    0x24: (0.0083, 110, 0.1),
    0x1E: (0.0083, 20, 1.0),
    0x15: (0.0083, 20, 0.1),
}
READ_SERIAL, SOFT_RESET = 0x89, 0x94
CREEP_ABOVE = 95.0  # %RH
CREEP_STEP = 0.2  # %RH per measurement above it
CREEP_MAX = 4.0
HEAT_RISE = 0.15  # Cel per mW for a 1 s pulse (a 200 mW pulse heats by ~30 Cel)


def _saturation(t: float) -> float:
    return 6.112 * math.exp(17.62 * t / (243.12 + t))


class SHT4xEmulator(I2CEmulator):
    chip: ClassVar[str] = "sht4x"

    def __init__(
        self,
        *,
        address: int = 0x44,
        clock: Clock | None = None,
        air: Air | None = None,
        seed: int = 0,
    ) -> None:
        rng = Random(seed ^ 0x5474)
        self.serial = (rng.getrandbits(16), rng.getrandbits(16))
        self.creep = 0.0  # %RH the reading is off after long high humidity (not volatile)
        self.heater_pulses: list[tuple[float, int, float]] = []  # (time, mW, seconds)
        self.measurements = 0
        self.log: list[int] = []  # every accepted command
        self.bad_crc_left = 0
        self.silent = False
        super().__init__(address=address, clock=clock, air=air, seed=seed)

    # --- fault modes ---

    def corrupt(self, count: int = 1) -> None:
        self.bad_crc_left = count

    def silence(self, silent: bool = True) -> None:
        self.silent = silent

    def heater_on_time(self) -> float:
        return sum(s for _, _, s in self.heater_pulses)

    # --- the chip ---

    def power_on(self) -> None:
        self.busy_until = 0.0
        self.answer: bytes | None = None

    def on_write(self, data: bytes) -> None:
        now = self.clock.now()
        if now < self.busy_until:
            raise Nack("busy")
        if len(data) != 1:
            raise Nack("SHT4x commands are one byte")
        cmd = data[0]
        self.answer = None
        if cmd in MEASURE or cmd in HEATER or cmd in (READ_SERIAL, SOFT_RESET):
            self.log.append(cmd)
        if cmd in MEASURE or cmd in HEATER:
            wait, power, heat = MEASURE.get(cmd) or HEATER[cmd]
            self.busy_until = now + heat + wait
            self.answer = sensirion_words(*self._measure(power, heat, now))
        elif cmd == READ_SERIAL:
            self.busy_until = now + 0.001
            self.answer = sensirion_words(*self.serial)
        elif cmd == SOFT_RESET:
            self.power_on()
            self.busy_until = now + 0.001
        else:
            raise Nack("unknown command")

    def on_read(self, length: int) -> bytes:
        if self.silent or self.clock.now() < self.busy_until or self.answer is None:
            raise Nack("no data")
        out, self.answer = self.answer, None
        if self.bad_crc_left > 0:
            self.bad_crc_left -= 1
            flipped = bytearray(out)
            flipped[3] ^= 0x04  # a bit of the humidity word flipped on the wire
            out = bytes(flipped)
        return out

    def _measure(self, power: int, heat: float, now: float) -> tuple[int, int]:
        self.measurements += 1
        air = self.air.sample()
        t = air.temperature
        if power:
            self.heater_pulses.append((now, power, heat))
            rise = HEAT_RISE * power * (1.0 if heat >= 1.0 else 0.35)
            self.creep = max(0.0, self.creep - power * heat / 50.0)
            t += rise
            rh = air.humidity * _saturation(air.temperature) / _saturation(t)
        else:
            if air.humidity > CREEP_ABOVE:
                self.creep = min(CREEP_MAX, self.creep + CREEP_STEP)
            rh = air.humidity + self.creep
        t_word = round((t + 45.0) * 65535.0 / 175.0)
        rh_word = round((rh + 6.0) * 65535.0 / 125.0)
        return max(0, min(0xFFFF, t_word)), max(0, min(0xFFFF, rh_word))
