"""The emulated I2C bus: byte-level chip emulators behind the smbus2 surface the transport uses.

An emulator answers `i2c_rdwr(*msgs)` with the bytes the chip would put on the wire, from its
own register file or command state machine, and refuses transfers the way the chip does (a NACK
is `OSError(121)`, what Linux reports). Every emulator has the same fault modes:

- `nack_burst(n)`: the next n transfers are NACKed (supply dips, long wires);
- `unplug()` / `replug()`: every transfer NACKs until it is plugged back, which power-cycles it
  (volatile settings are lost, as on a real chip);

plus its own (bad CRC words, measurements that never complete, silence).

`EmulatedBus` routes transfers by address to the attached emulators. The process-wide registry
(`attach`, `detach`, `reset`, `bus`) is what a driver with `bus = "emulated"` talks to; empty
addresses get a realistic emulator on demand: the default set (BME280 at 0x76, SCD41 at 0x62,
SHT4x at 0x44) on first contact, or the chip a driver asks for at its configured address.

Time comes from a clock: the real one for demos, `VirtualClock` in tests, where the transport's
waits advance the clock instead of sleeping. The air the chips measure (`Air`) is the seeded
simulated environment of `drivers.simulated`, shared by all chips on the bus, with fixed values
on request.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, TypeVar

from drivers.simulated import SimulatedSensor

__all__ = [
    "DEFAULT_CHIPS",
    "Air",
    "AirSample",
    "Clock",
    "EmulatedBus",
    "I2CEmulator",
    "Nack",
    "RealClock",
    "VirtualClock",
    "air",
    "attach",
    "bus",
    "clock",
    "create",
    "detach",
    "ensure",
    "reset",
    "sensirion_crc",
]

I2C_M_RD = 0x0001  # the read flag of struct i2c_msg

#: address -> chip created there on first contact when nothing is attached
DEFAULT_CHIPS: Mapping[int, str] = {0x76: "bme280", 0x62: "scd41", 0x44: "sht4x"}


# --- time ----------------------------------------------------------------------------------------


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""
        ...

    def sleep(self, seconds: float) -> None: ...

    def wall(self) -> float:
        """Unix time (for the daily cycle of the air)."""
        ...


class RealClock:
    def now(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)

    def wall(self) -> float:
        return time.time()


class VirtualClock:
    """A clock that only moves when someone sleeps on it (or `advance`s it): tests drive the real
    driver code, with its datasheet waits, in no time."""

    def __init__(self, start: float = 1_717_243_200.0) -> None:  # 2024-06-01 12:00 UTC
        self._start = start
        self._t = 0.0
        self._lock = threading.Lock()
        self.slept = 0.0  # total seconds slept, for tests that check the waits

    def now(self) -> float:
        return self._t

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            with self._lock:
                self._t += seconds
                self.slept += seconds

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._t += seconds

    def wall(self) -> float:
        return self._start + self._t


# --- the air the chips measure -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AirSample:
    temperature: float  # Cel
    humidity: float  # %RH
    pressure: float  # Pa
    co2: float  # ppm


_AIR_QUANTITIES = ("temperature", "humidity", "pressure", "co2")


class Air:
    """Realistic, seeded indoor air (daily cycle, weather, noise), or fixed values for tests."""

    def __init__(self, *, clock: Clock | None = None, seed: int = 0, altitude: float = 0.0) -> None:
        self.clock: Clock = clock or RealClock()
        self._sim = SimulatedSensor(
            sensor_id="emulated-air",
            options={
                "kind": "all",
                "quantities": list(_AIR_QUANTITIES),
                "site": "indoor",
                "seed": seed,
                "altitude": altitude,
            },
        )
        self._fixed: dict[str, float] = {}
        self._last: tuple[float, AirSample] | None = None
        self._lock = threading.Lock()

    def fix(self, **values: float) -> None:
        """Hold quantities at exact values (temperature, humidity, pressure, co2)."""
        unknown = set(values) - set(_AIR_QUANTITIES)
        if unknown:
            raise ValueError(f"unknown air quantities: {', '.join(sorted(unknown))}")
        self._fixed.update({k: float(v) for k, v in values.items()})

    def release(self, *names: str) -> None:
        """Let fixed quantities follow the simulation again (all of them without names)."""
        for name in names or tuple(self._fixed):
            self._fixed.pop(name, None)

    def sample(self) -> AirSample:
        wall = self.clock.wall()
        with self._lock:
            if self._last is not None and self._last[0] == wall:
                base = self._last[1]
            else:
                values = {m.quantity: float(m.value or 0.0) for m in self._sim.read(wall)}
                base = AirSample(**{q: values[q] for q in _AIR_QUANTITIES})
                self._last = (wall, base)
        if not self._fixed:
            return base
        merged = {q: self._fixed.get(q, getattr(base, q)) for q in _AIR_QUANTITIES}
        return AirSample(**merged)


# --- one emulated chip ---------------------------------------------------------------------------


class Nack(Exception):
    """Raised inside an emulator to refuse a transfer; the bus turns it into OSError(121)."""


def _nack_error() -> OSError:
    return OSError(errno.EREMOTEIO, os.strerror(errno.EREMOTEIO))


def sensirion_crc(data: bytes) -> int:
    """Sensirion's CRC-8 (poly 0x31, init 0xFF), written out bit by bit: the emulators keep
    their own copy so a bug in the driver's table-driven one cannot hide behind them."""
    crc = 0xFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x31) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def sensirion_words(*words: int) -> bytes:
    out = bytearray()
    for w in words:
        pair = bytes(((w >> 8) & 0xFF, w & 0xFF))
        out += pair + bytes((sensirion_crc(pair),))
    return bytes(out)


class I2CEmulator:
    """Base of the chip emulators: routing of messages, the common fault modes, counters.

    Subclasses implement `on_write(data)`, `on_read(length)` and `power_on()`; they may raise
    Nack from either transfer hook."""

    chip: ClassVar[str] = ""

    def __init__(
        self, *, address: int, clock: Clock | None = None, air: Air | None = None, seed: int = 0
    ) -> None:
        self.address = address
        self.clock: Clock = clock or RealClock()
        self.air: Air = air or Air(clock=self.clock, seed=seed)
        self.seed = seed
        self.plugged = True
        self.transfers = 0  # i2c_rdwr calls that reached this chip
        self.nacked = 0  # of those, refused
        self.power_cycles = 0
        self._nack_left = 0
        self._lock = threading.RLock()
        self.power_on()

    # --- fault modes ---

    def nack_burst(self, count: int) -> None:
        """NACK the next `count` transfers."""
        self._nack_left = count

    def unplug(self) -> None:
        self.plugged = False

    def replug(self) -> None:
        """Plug back in: the chip powers up again with its volatile settings lost."""
        with self._lock:
            self.plugged = True
            self.power_cycles += 1
            self.power_on()

    # --- the bus surface ---

    def i2c_rdwr(self, *msgs: Any) -> None:
        with self._lock:
            self.transfers += 1
            try:
                if not self.plugged:
                    raise Nack("unplugged")
                if self._nack_left > 0:
                    self._nack_left -= 1
                    raise Nack("burst")
                for msg in msgs:
                    if msg.addr != self.address:
                        raise Nack("address")
                    if msg.flags & I2C_M_RD:
                        data = self.on_read(msg.len)
                        data = (bytes(data) + b"\xff" * msg.len)[: msg.len]  # idle SDA reads 1s
                        ctypes.memmove(msg.buf, data, msg.len)
                    else:
                        self.on_write(bytes(msg))
            except Nack:
                self.nacked += 1
                raise _nack_error() from None

    def close(self) -> None:
        """The bus object is shared; closing a transport leaves the chip as it is."""

    # --- chip hooks ---

    def power_on(self) -> None:
        """Reset volatile state, as at power-up."""

    def on_write(self, data: bytes) -> None:
        raise Nack("not implemented")

    def on_read(self, length: int) -> bytes:
        raise Nack("not implemented")


# --- the bus and the registry --------------------------------------------------------------------


E = TypeVar("E", bound=I2CEmulator)


class EmulatedBus:
    """Emulators by address, behind the smbus2 surface; an empty address NACKs."""

    def __init__(
        self,
        *,
        on_demand: Callable[[int], I2CEmulator | None] | None = None,
    ) -> None:
        self.devices: dict[int, I2CEmulator] = {}
        self._on_demand = on_demand
        self._lock = threading.Lock()

    def attach(self, address: int, emulator: E) -> E:
        with self._lock:
            self.devices[address] = emulator
        return emulator

    def detach(self, address: int) -> None:
        with self._lock:
            self.devices.pop(address, None)

    def device(self, address: int) -> I2CEmulator | None:
        with self._lock:
            dev = self.devices.get(address)
            if dev is None and self._on_demand is not None:
                dev = self._on_demand(address)
                if dev is not None:
                    self.devices[address] = dev
            return dev

    def i2c_rdwr(self, *msgs: Any) -> None:
        if not msgs:
            return
        dev = self.device(int(msgs[0].addr))
        if dev is None:
            raise _nack_error()
        dev.i2c_rdwr(*msgs)

    def close(self) -> None:
        pass


_lock = threading.Lock()
_clock: Clock = RealClock()
_air: Air | None = None
_defaults = True


def _on_demand(address: int) -> I2CEmulator | None:
    chip = DEFAULT_CHIPS.get(address) if _defaults else None
    return create(chip, address) if chip is not None else None


_bus = EmulatedBus(on_demand=_on_demand)


def bus() -> EmulatedBus:
    """The process-wide emulated bus (what `bus = "emulated"` talks to)."""
    return _bus


def clock() -> Clock:
    """The clock of the registry's emulators; the transports of `bus = "emulated"` sleep on it."""
    return _clock


def air() -> Air:
    """The air shared by the registry's emulators."""
    global _air
    with _lock:
        if _air is None:
            _air = Air(clock=_clock)
        return _air


def reset(*, clock: Clock | None = None, seed: int = 0, defaults: bool = True) -> EmulatedBus:
    """Empty the bus; new emulators use `clock` (default: real time) and air seeded with `seed`.
    With `defaults` false, empty addresses stay empty (NACK) until something is attached."""
    global _clock, _air, _defaults
    with _lock:
        _clock = clock or RealClock()
        _air = Air(clock=_clock, seed=seed)
        _defaults = defaults
    with _bus._lock:
        _bus.devices.clear()
    return _bus


def attach(address: int, emulator: E) -> E:
    """Put `emulator` on the emulated bus at `address` (replacing what was there)."""
    emulator.address = address
    return _bus.attach(address, emulator)


def detach(address: int) -> None:
    _bus.detach(address)


def create(chip: str, address: int) -> I2CEmulator:
    """A realistic emulator of `chip` ("bme280", "bmp280", "scd40", "scd41", "scd43",
    "sht4x") on the registry's clock and air, seeded by its address."""
    common: dict[str, Any] = {"address": address, "clock": _clock, "air": air(), "seed": address}
    if chip in ("bme280", "bmp280"):
        from drivers.emulators.bme280 import BME280Emulator

        return BME280Emulator(chip_id=0x60 if chip == "bme280" else 0x58, **common)
    if chip in ("scd40", "scd41", "scd43"):
        from drivers.emulators.scd4x import SCD4xEmulator

        return SCD4xEmulator(variant=chip, **common)
    if chip == "sht4x":
        from drivers.emulators.sht4x import SHT4xEmulator

        return SHT4xEmulator(**common)
    raise ValueError(f"no emulator for chip {chip!r}")


def ensure(address: int, chip: str) -> I2CEmulator:
    """The emulator at `address`, creating one of `chip` there if the address is empty."""
    with _bus._lock:
        dev = _bus.devices.get(address)
        if dev is None:
            dev = _bus.devices[address] = create(chip, address)
        return dev


@contextlib.contextmanager
def virtual_time(**fixed: float) -> Iterator[VirtualClock]:
    """For tests: the registry's emulators on a fresh `VirtualClock`, the air held at `fixed`
    quantities (e.g. temperature=21.0), and everything back to real time afterwards."""
    clk = VirtualClock()
    reset(clock=clk)
    if fixed:
        air().fix(**fixed)
    try:
        yield clk
    finally:
        reset()
