"""A reading on its way through the gateway: born in a driver, judged by modules, spooled."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Reading:
    sensor: str
    quantity: str
    unit: str
    value: float | None  # None: the sensor failed this time; `flags` says why
    t: float  # Unix seconds when it was read
    synced: bool  # whether wall-clock time was trustworthy when it was read
    score: float = 0.0  # anomaly score in [0, 1] from the module chain
    flags: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.sensor}/{self.quantity}"
