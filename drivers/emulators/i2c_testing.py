"""Test scaffolding for the I2C chips, kept beside their emulators so that every test of an I2C
driver uses the same set-up instead of a copy of it: a transport to one emulated chip alone on
a bus of its own, waiting on the chip's clock (under `virtual_time`, waits advance the clock
instead of sleeping), and the values one read of a driver gave.

Plain functions that import no test framework; the `clock` fixture (`virtual_time` for one test)
is in tests/conftest.py.
"""

from __future__ import annotations

from typing import Any

from drivers.base import SensorDriver
from drivers.emulators.i2c import Clock, EmulatedBus, I2CEmulator
from drivers.i2c_bus import I2CTransport

__all__ = ["read_values", "transport_to"]


def transport_to(chip: I2CEmulator, clock: Clock, **options: Any) -> I2CTransport:
    """A transport to `chip` at its address, on a new bus with nothing else on it; `options`
    go to the transport (counters, retries, ...)."""
    bus = EmulatedBus()
    bus.attach(chip.address, chip)
    return I2CTransport(bus, chip.address, wait=clock.sleep, **options)


def read_values(driver: SensorDriver, now: float = 0.0) -> dict[str, float | None]:
    """Quantity -> value of one read of `driver`."""
    return {m.quantity: m.value for m in driver.read(now)}
