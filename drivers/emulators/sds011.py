"""A byte-level Nova SDS011, written from the datasheet (not from our driver's code).

It answers the real 19-byte commands with 10-byte frames and correct checksums, and models:
reporting mode (active: a report every second, or once per working period; query: only on
request), sleep (a sleeping sensor ignores every command except 06), the working period, the
device ID (commands to another ID are ignored) and the firmware date. Mode, period and ID
survive a power cycle; sleep does not (the sensor powers up working).

Values are a seeded random walk around an urban PM2.5 level, PM10 a drifting ratio above it,
quantized to 0.1 ug/m3 as the chip does. After power-up or wake the first frames are all zero
(`zero_for` seconds), then inflated and noisy until `warmup` has passed: a driver must not pass
either on. Every report built is recorded in `reports` with the values it meant, so a test can
compare what the driver read with what the chip said.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from drivers.emulators.pty import SerialChip

__all__ = ["Report", "SDS011Chip"]

_HEAD, _TAIL, _HOST, _REPORT, _REPLY = 0xAA, 0xAB, 0xB4, 0xC0, 0xC5
_NAMES = {
    (0x02, 0): "get-mode",
    (0x04, None): "query",
    (0x05, None): "set-id",
    (0x06, 0): "get-state",
    (0x07, None): "firmware",
    (0x08, 0): "get-period",
}


@dataclass(frozen=True)
class Report:
    """A data report the chip built: what it meant, and whether it was still warming up."""

    time: float
    pm2_5: float
    pm10: float
    warm: bool
    frame: bytes


class SDS011Chip(SerialChip):
    START = bytes([_HEAD])
    command_length = 19

    def __init__(
        self,
        *,
        seed: int = 0,
        mode: str = "active",
        asleep: bool = False,
        period: int = 0,
        device_id: bytes = b"\xa1\x60",
        firmware: tuple[int, int, int] = (18, 11, 16),
        warmup: float = 30.0,
        zero_for: float | None = None,
        level: float = 12.0,
        report_every: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(seed=seed, warmup=warmup, clock=clock)
        if mode not in ("active", "query"):
            raise ValueError("mode is active or query")
        self.mode = mode
        self.working = not asleep
        self.period = period
        self.device_id = device_id
        self.firmware = firmware
        #: seconds after wake with an all-zero payload (ricki-z/SDS011#40)
        self.zero_for = min(2.0, warmup / 3) if zero_for is None else zero_for
        #: the next N sleep commands are acknowledged but ignored (ricki-z/SDS011#10)
        self.ignore_sleep = 0
        #: every data report built, oldest first
        self.reports: list[Report] = []
        #: seconds between reports in active mode with a continuous working period
        self.report_every = report_every
        self._level = level
        self._log_level = 0.0
        self._ratio = 1.6
        self._next_report = clock()

    # --- state a test may look at ---

    @property
    def asleep(self) -> bool:
        return not self.working

    @property
    def last(self) -> Report | None:
        return self.reports[-1] if self.reports else None

    # --- values ---

    def _values(self, now: float) -> tuple[float, float, bool]:
        rng = self.rng
        self._log_level = 0.97 * self._log_level + rng.gauss(0.0, 0.08)
        self._ratio = min(3.0, max(1.1, self._ratio + rng.gauss(0.0, 0.03)))
        pm2_5 = max(0.0, self._level * (2.718281828**self._log_level) + rng.gauss(0.0, 0.4))
        pm10 = pm2_5 * self._ratio + abs(rng.gauss(0.0, 0.5))
        age = self.warming(now)
        if age is not None and age < self.zero_for:
            return 0.0, 0.0, True
        if age is not None:  # fan spinning up: unstable, too high
            pm2_5, pm10 = pm2_5 * rng.uniform(1.3, 2.5), pm10 * rng.uniform(1.3, 2.5)
        # the chip reports 0.1 ug/m3 steps up to 999.9
        pm2_5 = min(9999, round(pm2_5 * 10)) / 10
        pm10 = min(9999, round(pm10 * 10)) / 10
        return pm2_5, pm10, age is not None

    # --- frames ---

    def _frame(self, kind: int, d1_4: bytes) -> bytes:
        payload = d1_4 + self.device_id
        return bytes([_HEAD, kind]) + payload + bytes([sum(payload) & 0xFF, _TAIL])

    def _report(self, now: float) -> bytes:
        pm2_5, pm10, warm = self._values(now)
        raw = round(pm2_5 * 10).to_bytes(2, "little") + round(pm10 * 10).to_bytes(2, "little")
        frame = self._frame(_REPORT, raw)
        self.reports.append(Report(now, pm2_5, pm10, warm, frame))
        return self.emit(frame)

    def _reply(self, function: int, a: int = 0, b: int = 0, c: int = 0) -> bytes:
        return self.emit(self._frame(_REPLY, bytes([function, a, b, c])))

    def corrupt(self, frame: bytes) -> bytes:
        cs = frame[8]
        bad = (cs + 1) & 0xFF
        if bad == _HEAD:
            bad = (bad + 2) & 0xFF
        return frame[:8] + bytes([bad]) + frame[9:]

    # --- commands ---

    def valid_command(self, command: bytes) -> bool:
        return (
            command[1] == _HOST
            and command[18] == _TAIL
            and sum(command[2:17]) & 0xFF == command[17]
        )

    def execute(self, command: bytes, now: float) -> bytes:
        function, op, value = command[2], command[3], command[4]
        target = command[15:17]
        if target not in (b"\xff\xff", self.device_id):
            self.commands.append("other-id")
            return b""
        name = _NAMES.get((function, op)) or _NAMES.get((function, None))
        if name is None:
            name = {
                0x02: "set-query-mode" if value else "set-active-mode",
                0x06: "work" if value else "sleep",
                0x08: f"set-period {value}",
            }.get(function, f"unknown {function:02x}")
        self.commands.append(name)
        if not self.working and function != 0x06:
            return b""  # asleep: only sleep/work is heard
        if function == 0x02:
            if op == 1:
                self.mode = "query" if value else "active"
            return self._reply(0x02, op, 1 if self.mode == "query" else 0)
        if function == 0x04:
            return self._report(now)
        if function == 0x05:
            self.device_id = bytes(command[13:15])
            return self._reply(0x05)
        if function == 0x06:
            if op == 1:
                if value == 0 and self.ignore_sleep > 0:
                    self.ignore_sleep -= 1
                elif value == 0:
                    self.working = False
                elif not self.working:
                    self.working = True
                    self._woke_at = now
                    self._next_report = now + self.report_every
            return self._reply(0x06, op, 1 if self.working else 0)
        if function == 0x07:
            return self._reply(0x07, *self.firmware)
        if function == 0x08:
            if op == 1 and value <= 30:
                self.period = value
            return self._reply(0x08, op, self.period)
        return b""

    def tick(self, now: float) -> bytes:
        if not self.working or self.mode != "active" or now < self._next_report:
            return b""
        self._next_report = now + (self.report_every if self.period == 0 else self.period * 60.0)
        return self._report(now)

    def power_cycle(self, now: float) -> None:
        super().power_cycle(now)
        self.working = True
        self._next_report = now + self.report_every
