"""A byte-level Plantower PMS5003 / PMS7003, written from the datasheet (not from our driver).

It answers the real 7-byte commands: mode (E1: passive/active, acknowledged with an 8-byte
`42 4D 00 04 E1 mm cs cs`), passive read (E2: a 32-byte data frame, in passive mode only) and
sleep/wake (E4: sleep is acknowledged, wake is not; a sleeping sensor hears nothing else).
After power-up it is in active mode and streams a frame every `report_every` seconds
(2.3 s when the air is stable), and the mode does not survive a power cycle.

Values: a seeded random walk of PM2.5 around an urban level; PM1 and PM10 in drifting ratios;
"CF=1" equal to the atmospheric value below 30 ug/m3 and higher above, as Plantower's tables do;
particle counts per 0.1 L falling with size. For `zero_for` seconds after a wake every count is
zero while PM is not (avaldebe/PyPMS#3), then values are unstable until `warmup` has passed.
Every data frame built is recorded in `reports` with its words.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from drivers.emulators.pty import SerialChip

__all__ = ["PMS5003Chip", "Report"]

_START = b"\x42\x4d"
_MODE, _READ, _SLEEP = 0xE1, 0xE2, 0xE4
_VERSION = 0x97


@dataclass(frozen=True)
class Report:
    """A data frame the chip built: the 12 data words by name, and whether it was warming up."""

    time: float
    values: dict[str, int]
    warm: bool
    frame: bytes


_WORDS = (
    "pm1_cf1",
    "pm2_5_cf1",
    "pm10_cf1",
    "pm1",
    "pm2_5",
    "pm10",
    "n0_3",
    "n0_5",
    "n1_0",
    "n2_5",
    "n5_0",
    "n10",
)


def _sum16(data: bytes) -> bytes:
    return (sum(data) & 0xFFFF).to_bytes(2, "big")


class PMS5003Chip(SerialChip):
    START = _START
    command_length = 7

    def __init__(
        self,
        *,
        seed: int = 0,
        mode: str = "active",
        asleep: bool = False,
        model: str = "pms5003",
        warmup: float = 30.0,
        zero_for: float | None = None,
        level: float = 12.0,
        report_every: float = 2.3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(seed=seed, warmup=warmup, clock=clock)
        if mode not in ("active", "passive"):
            raise ValueError("mode is active or passive")
        self.mode = mode
        self.working = not asleep
        self.model = model
        self.zero_for = min(3.0, warmup / 3) if zero_for is None else zero_for
        self.report_every = report_every
        #: every data frame built, oldest first
        self.reports: list[Report] = []
        self._level = level
        self._log_level = 0.0
        self._r1 = 0.68
        self._r10 = 1.3
        self._next_report = clock()

    @property
    def asleep(self) -> bool:
        return not self.working

    @property
    def last(self) -> Report | None:
        return self.reports[-1] if self.reports else None

    # --- values ---

    def _values(self, now: float) -> tuple[dict[str, int], bool]:
        rng = self.rng
        self._log_level = 0.97 * self._log_level + rng.gauss(0.0, 0.08)
        self._r1 = min(0.95, max(0.5, self._r1 + rng.gauss(0.0, 0.01)))
        self._r10 = min(2.5, max(1.05, self._r10 + rng.gauss(0.0, 0.02)))
        atm = max(0.0, self._level * (2.718281828**self._log_level) + rng.gauss(0.0, 0.6))
        age = self.warming(now)
        if age is not None and age >= self.zero_for:
            atm *= rng.uniform(1.3, 2.5)  # fan spinning up: unstable, too high
        pm = {"pm1": atm * self._r1, "pm2_5": atm, "pm10": atm * self._r10}
        v = {k: round(x) for k, x in pm.items()}
        for k, x in pm.items():  # CF=1 reads higher than "atmospheric" above ~30 ug/m3
            v[k + "_cf1"] = round(x if x <= 30 else 30 + (x - 30) * 1.5)
        # particles per 0.1 L above each size, from the mass (fine particles dominate)
        n0_3 = atm * rng.uniform(140.0, 180.0) + 60.0
        n0_5 = n0_3 * rng.uniform(0.28, 0.33)
        n1_0 = n0_5 * rng.uniform(0.15, 0.22)
        n2_5 = n1_0 * rng.uniform(0.08, 0.14) * self._r10
        n5_0 = n2_5 * rng.uniform(0.25, 0.35)
        n10 = n5_0 * rng.uniform(0.2, 0.4)
        counts = (n0_3, n0_5, n1_0, n2_5, n5_0, n10)
        for k, x in zip(("n0_3", "n0_5", "n1_0", "n2_5", "n5_0", "n10"), counts, strict=True):
            v[k] = 0 if age is not None and age < self.zero_for else round(x)
        return {k: min(0xFFFF, v[k]) for k in _WORDS}, age is not None

    # --- frames ---

    def _report(self, now: float) -> bytes:
        values, warm = self._values(now)
        body = _START + (28).to_bytes(2, "big")
        body += b"".join(values[k].to_bytes(2, "big") for k in _WORDS)
        body += bytes([_VERSION, 0x00])
        frame = body + _sum16(body)
        self.reports.append(Report(now, values, warm, frame))
        return self.emit(frame)

    def _ack(self, cmd: int, value: int) -> bytes:
        body = _START + (4).to_bytes(2, "big") + bytes([cmd, value])
        return self.emit(body + _sum16(body))

    def corrupt(self, frame: bytes) -> bytes:
        bad = (frame[-1] + 1) & 0xFF
        if bad == _START[0]:
            bad = (bad + 2) & 0xFF
        return frame[:-1] + bytes([bad])

    # --- commands ---

    def valid_command(self, command: bytes) -> bool:
        return _sum16(command[:5]) == command[5:7]

    def execute(self, command: bytes, now: float) -> bytes:
        cmd, value = command[2], command[4]
        name = {
            _MODE: "passive-mode" if value == 0 else "active-mode",
            _READ: "passive-read",
            _SLEEP: "sleep" if value == 0 else "wake",
        }.get(cmd, f"unknown {cmd:02x}")
        self.commands.append(name)
        if cmd == _SLEEP:
            if value == 0:
                self.working = False
                return self._ack(_SLEEP, 0)
            if not self.working:
                self.working = True
                self._woke_at = now
                self._next_report = now + self.report_every
            return b""
        if not self.working:
            return b""
        if cmd == _MODE and value in (0, 1):
            self.mode = "passive" if value == 0 else "active"
            return self._ack(_MODE, value)
        if cmd == _READ and self.mode == "passive":
            return self._report(now)
        return b""

    def tick(self, now: float) -> bytes:
        if not self.working or self.mode != "active" or now < self._next_report:
            return b""
        self._next_report = now + self.report_every
        return self._report(now)

    def power_cycle(self, now: float) -> None:
        super().power_cycle(now)
        self.working = True
        self.mode = "active"
        self._next_report = now + self.report_every
