"""The interface every sensor driver implements.

A driver wraps one physical (or simulated) sensor. It is constructed with its validated options,
then the sampler calls `open()` once, `read()` at the sensor's interval and `close()` at the end.
When `blocking` is true (any real bus I/O), those calls run in a worker thread so a slow serial
read never stalls the event loop; pure-CPU drivers set it false and run inline.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from gateway.core.fields import Field


@dataclass(frozen=True, slots=True)
class Measurement:
    """One quantity from one read. `value` None means this quantity failed; `flags` says why
    or qualifies the value (e.g. "warmup", "clipped")."""

    quantity: str
    value: float | None
    flags: tuple[str, ...] = ()


class SensorDriver(ABC):
    #: name under which the driver is registered and referenced as `driver = "..."` in config
    name: ClassVar[str]
    #: typed options the `[[sensor]]` table may carry besides id, driver and interval
    CONFIG: ClassVar[Mapping[str, Field]] = {}
    #: whether open/read/close do blocking I/O and must run off the event loop
    blocking: ClassVar[bool] = True
    #: seconds between reads when the config does not say
    default_interval: ClassVar[float] = 60.0

    def __init__(self, *, sensor_id: str, options: Mapping[str, Any]) -> None:
        self.sensor_id = sensor_id
        self.options = dict(options)
        #: fault counters of this sensor ("checksum", "timeout", "nack", "resync", ...), shown
        #: in health; drivers count what they saw and recovered from, the sampler what failed
        self.counters: Counter[str] = Counter()

    @property
    @abstractmethod
    def quantities(self) -> Mapping[str, str]:
        """Quantity name -> SenML unit, for every quantity `read()` returns."""

    def open(self) -> None:  # noqa: B027 - optional hook
        """Claim the device and configure it. Raise SensorError when it is not there."""

    @abstractmethod
    def read(self, now: float) -> list[Measurement]:
        """Take one reading of every quantity. Raise SensorError when nothing could be read."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release the device; must be safe to call after a failed open()."""

    def ambient(self, quantity: str, value: float) -> None:  # noqa: B027 - optional hook
        """Another sensor on this gateway just measured `quantity` (e.g. "pressure" in Pa).
        Drivers that compensate for it (SCD4x: ambient pressure) take it here; called on the
        event loop, so it must only store the value."""
