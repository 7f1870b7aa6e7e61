"""A byte-level SCD40/41/43 behind the emulated I2C bus.

The command state machine of the datasheet: 16-bit commands with CRC-checked argument words,
execution times during which the chip NACKs everything, the short list of commands accepted
while a periodic measurement runs (every other one is NACKed), a sample every 5 s (30 s in
low-power mode) with the first one 5 s after the start, data-ready words, a data buffer cleared
by reading it (a read with no data NACKs), single shots on the SCD41/43 only, and settings that
are lost at power-up.

The values follow the air: CO2 as the cell sees it is the air's CO2 scaled by the real pressure
over the pressure the chip assumes (the ambient pressure it was told, else the altitude's), so
pressure compensation visibly matters; the temperature is the chip's own (4 Cel of self-heating)
minus the configured offset, the humidity follows from the air's dew point at that temperature.

Fault modes besides the common ones: `corrupt(n)` (the next n answers carry a flipped data bit,
so their CRC fails), `stall()` (no new sample is ever ready).
"""

from __future__ import annotations

import math
from random import Random
from typing import ClassVar

from drivers.emulators.i2c import Air, Clock, I2CEmulator, Nack, sensirion_crc, sensirion_words

__all__ = ["COMMANDS", "SCD4xEmulator"]

#: command -> (name, execution time s, argument words, answer words, allowed while measuring)
COMMANDS: dict[int, tuple[str, float, int, int, bool]] = {
    0x21B1: ("start_periodic_measurement", 0.0, 0, 0, False),
    0x21AC: ("start_low_power_periodic_measurement", 0.0, 0, 0, False),
    0xEC05: ("read_measurement", 0.001, 0, 3, True),
    0x3F86: ("stop_periodic_measurement", 0.5, 0, 0, True),
    0x241D: ("set_temperature_offset", 0.001, 1, 0, False),
    0x2318: ("get_temperature_offset", 0.001, 0, 1, False),
    0x2427: ("set_sensor_altitude", 0.001, 1, 0, False),
    0x2322: ("get_sensor_altitude", 0.001, 0, 1, False),
    0xE000: ("ambient_pressure", 0.001, 0, 1, True),  # with a word: set; without: get
    0x362F: ("perform_forced_recalibration", 0.4, 1, 1, False),
    0x2416: ("set_automatic_self_calibration_enabled", 0.001, 1, 0, False),
    0x2313: ("get_automatic_self_calibration_enabled", 0.001, 0, 1, False),
    0xE4B8: ("get_data_ready_status", 0.001, 0, 1, True),
    0x3615: ("persist_settings", 0.8, 0, 0, False),
    0x3682: ("get_serial_number", 0.001, 0, 3, False),
    0x3639: ("perform_self_test", 10.0, 0, 1, False),
    0x3632: ("perform_factory_reset", 1.2, 0, 0, False),
    0x3646: ("reinit", 0.02, 0, 0, False),
    0x202F: ("get_sensor_variant", 0.001, 0, 1, False),
    0x219D: ("measure_single_shot", 5.0, 0, 0, False),
    0x2196: ("measure_single_shot_rht_only", 0.05, 0, 0, False),
    0x36E0: ("power_down", 0.001, 0, 0, False),
    0x36F6: ("wake_up", 0.02, 0, 0, False),
}
_SCD41_ONLY = {0x219D, 0x2196, 0x36E0, 0x36F6}
_VARIANT_BITS = {"scd40": 0, "scd41": 1, "scd43": 5}
SELF_HEATING = 4.0  # Cel the chip runs above the air


def _saturation(t: float) -> float:
    """Magnus formula, hPa."""
    return 6.112 * math.exp(17.62 * t / (243.12 + t))


class SCD4xEmulator(I2CEmulator):
    chip: ClassVar[str] = "scd41"

    def __init__(
        self,
        *,
        address: int = 0x62,
        variant: str = "scd41",
        clock: Clock | None = None,
        air: Air | None = None,
        seed: int = 0,
    ) -> None:
        if variant not in _VARIANT_BITS:
            raise ValueError(f"unknown SCD4x variant {variant!r}")
        self.variant = variant
        rng = Random(seed ^ 0x5CD4)
        self.serial = tuple(rng.getrandbits(16) for _ in range(3))
        #: every accepted command with its argument words, in order
        self.log: list[tuple[str, tuple[int, ...]]] = []
        self.bad_crc_left = 0
        self.stalled = False
        super().__init__(address=address, clock=clock, air=air, seed=seed)

    # --- fault modes ---

    def corrupt(self, count: int = 1) -> None:
        """Flip a data bit in the next `count` answers (their CRC no longer matches)."""
        self.bad_crc_left = count

    def stall(self, stalled: bool = True) -> None:
        """No new sample becomes ready (a stuck measurement)."""
        self.stalled = stalled

    def commands(self, name: str) -> list[tuple[int, ...]]:
        """The arguments of every accepted `name` command."""
        return [args for n, args in self.log if n == name]

    # --- state ---

    def power_on(self) -> None:
        self.mode = "idle"  # idle, periodic, low-power, asleep
        self.busy_until = 0.0
        self.started_at = 0.0
        self.read_index = 0
        self.answer: bytes | None = None
        self.answer_at = 0.0
        self.single_at: float | None = None  # when a single shot completes
        self.single_ready = False
        self.offset_word = 1498  # 4 Cel
        self.altitude = 0
        self.pressure_hpa: int | None = None  # None: compensate by altitude
        self.asc = True

    def _period(self) -> float:
        return 30.0 if self.mode == "low-power" else 5.0

    def _latest_index(self, now: float) -> int:
        if self.mode not in ("periodic", "low-power") or self.stalled:
            return self.read_index
        return int((now - self.started_at) / self._period())

    def _ready(self, now: float) -> bool:
        if self.stalled:
            return False
        if self.single_at is not None and now >= self.single_at:
            self.single_ready, self.single_at = True, None
        return self.single_ready or self._latest_index(now) > self.read_index

    # --- the bus ---

    def on_write(self, data: bytes) -> None:
        now = self.clock.now()
        if now < self.busy_until or (self.mode == "asleep" and data[:2] != b"\x36\xf6"):
            raise Nack("busy")
        if len(data) < 2:
            raise Nack("short command")
        code = int.from_bytes(data[:2], "big")
        spec = COMMANDS.get(code)
        if spec is None or (code in _SCD41_ONLY and self.variant == "scd40"):
            raise Nack("unknown command")
        name, exec_time, n_args, n_answer, while_measuring = spec
        if self.mode in ("periodic", "low-power") and not while_measuring:
            raise Nack("not allowed while measuring")
        payload = data[2:]
        if len(payload) % 3:
            raise Nack("partial word")
        args = []
        for i in range(0, len(payload), 3):
            if sensirion_crc(payload[i : i + 2]) != payload[i + 2]:
                raise Nack("argument CRC")
            args.append(int.from_bytes(payload[i : i + 2], "big"))
        if code == 0xE000:
            n_args, n_answer = (1, 0) if args else (0, 1)
        if len(args) != n_args:
            raise Nack("wrong argument count")
        self.log.append((name, tuple(args)))
        self.answer = None
        self.busy_until = now + exec_time
        if code == 0x36F6:  # wake_up is not acknowledged
            self.mode = "idle"
            raise Nack("wake_up")
        words = self._execute(code, args, now)
        if n_answer:
            self.answer = None if words is None else sensirion_words(*words)
            self.answer_at = self.busy_until

    def on_read(self, length: int) -> bytes:
        now = self.clock.now()
        if now < self.busy_until or self.answer is None:
            raise Nack("no data")
        out, self.answer = self.answer, None
        if self.bad_crc_left > 0:
            self.bad_crc_left -= 1
            flipped = bytearray(out)
            flipped[0] ^= 0x10  # a bit flipped on the wire
            out = bytes(flipped)
        return out

    def _execute(self, code: int, args: list[int], now: float) -> tuple[int, ...] | None:
        if code == 0x21B1 or code == 0x21AC:
            self.mode = "periodic" if code == 0x21B1 else "low-power"
            self.started_at = now
            self.read_index = 0
        elif code == 0x3F86:
            self.mode = "idle"
        elif code == 0xEC05:
            if not self._ready(now):
                return None  # no data: the read NACKs
            self.read_index = self._latest_index(now)
            self.single_ready = False
            return self._measurement()
        elif code == 0xE4B8:
            return (0x8006 if self._ready(now) else 0x8000,)
        elif code == 0x241D:
            self.offset_word = args[0]
        elif code == 0x2318:
            return (self.offset_word,)
        elif code == 0x2427:
            self.altitude = args[0]
        elif code == 0x2322:
            return (self.altitude,)
        elif code == 0xE000:
            if args:
                self.pressure_hpa = args[0]
            else:
                return (self.pressure_hpa or 1013,)
        elif code == 0x2416:
            self.asc = bool(args[0])
        elif code == 0x2313:
            return (int(self.asc),)
        elif code == 0x3682:
            return self.serial
        elif code == 0x202F:
            return ((_VARIANT_BITS[self.variant] << 12) | 0x0440,)
        elif code == 0x219D:
            self.single_at = now + 5.0
        elif code == 0x2196:
            self.single_at = now + 0.05
        elif code == 0x36E0:
            self.mode = "asleep"
        elif code == 0x3639:
            return (0,)
        elif code == 0x362F:
            return (0x8000 + max(-0x7FFF, min(0x7FFF, args[0] - round(self.air.sample().co2))),)
        elif code == 0x3632:
            self.power_on()
        elif code == 0x3646:
            self.offset_word, self.altitude, self.asc = 1498, 0, True
        return ()

    def assumed_pressure(self) -> float:
        """The pressure (Pa) the chip compensates for: the ambient pressure it was told, else
        the barometric formula at its altitude."""
        if self.pressure_hpa is not None:
            return self.pressure_hpa * 100.0
        return float(101_325.0 * (1.0 - 2.25577e-5 * self.altitude) ** 5.25588)

    def _measurement(self) -> tuple[int, int, int]:
        air = self.air.sample()
        co2 = air.co2 * air.pressure / self.assumed_pressure()
        offset = self.offset_word * 175.0 / 65535.0
        t = air.temperature + SELF_HEATING - offset
        rh = air.humidity * _saturation(air.temperature) / _saturation(t)
        return (
            max(0, min(0xFFFF, round(co2))),
            max(0, min(0xFFFF, round((t + 45.0) * 65535.0 / 175.0))),
            max(0, min(0xFFFF, round(rh * 65535.0 / 100.0))),
        )
