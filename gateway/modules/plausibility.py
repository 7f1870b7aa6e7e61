"""Rule module:
`plausibility`: combinations no healthy set of sensors produces: PM2.5 above PM10, dew point
above temperature, relative humidity outside 0-100, station pressure far from what the
configured altitude implies, two sensors of one quantity disagreeing.

State is kept per series (`sensor/quantity`) and a reading is judged only from what came
before it: the chain calls `judge` once per sensor read, in time order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from gateway.modules.base import NO_OPINION, DetectionModule, Verdict
from gateway.modules.series import (
    DEFAULT_TOLERANCE,
    check_number_table,
    module_options,
)
from gateway.reading import Reading
from gateway.schema import Field

# --------------------------------------------------------------------------- plausibility


def dew_point(temperature: float, humidity: float) -> float:
    """Dew point (Cel) from temperature (Cel) and relative humidity (%RH), Magnus formula with
    Sonntag's constants (within 0.35 K from -45 to 60 Cel)."""
    b, c = 17.62, 243.12
    g = math.log(max(humidity, 1e-6) / 100.0) + b * temperature / (c + temperature)
    return c * g / (b - g)


def station_pressure(altitude: float) -> float:
    """Standard-atmosphere pressure (Pa) at `altitude` metres (the barometric formula)."""
    return 101_325.0 * math.pow(1.0 - 2.25577e-5 * altitude, 5.25588)


_PLAUSIBILITY_QUANTITIES = frozenset(
    {"temperature", "humidity", "dew_point", "pressure", "pm1", "pm2_5", "pm10", "co2"}
)


class PlausibilityModule(DetectionModule):
    """Cross-quantity and cross-sensor checks, on the latest value of every series.

    On the same sensor (values at most `max_age` apart): PM1 above PM2.5 or PM2.5 above PM10
    (beyond `pm_margin`), a reported dew point above the temperature (beyond `dew_margin`).
    On its own: relative humidity outside 0–100 (the dew point it implies would lie above the
    temperature), station pressure more than `pressure_band` off the standard atmosphere at
    `altitude` (when configured). Across sensors: two sensors of a quantity in `tolerances`
    that differ by more than its tolerance within `max_age`. The reading that completes an
    implausible combination is flagged.
    """

    name = "plausibility"
    version = "1.0.0"
    SAMPLE_CONFIG: ClassVar[str] = """\
[[module]]
id = "plausibility"
kind = "plausibility"
altitude = 273.0
pressure_band = 0.06
max_age = "2 min"
tolerances = { temperature = 2.0, humidity = 10.0 }
"""
    quantities: ClassVar[frozenset[str] | None] = _PLAUSIBILITY_QUANTITIES
    CONFIG: ClassVar[Mapping[str, Field]] = {
        "altitude": Field(
            "float",
            "station altitude in metres; enables the pressure check",
            default=None,
            min=-500,
            max=9000,
        ),
        "pressure_band": Field(
            "float",
            "allowed relative deviation from the standard pressure at `altitude` (weather)",
            default=0.06,
            min=0.01,
            max=0.5,
        ),
        "max_age": Field(
            "duration", "readings further apart than this are not compared", default=120.0, min=0
        ),
        "pm_margin": Field(
            "float", "ug/m3 a finer PM fraction may exceed a coarser one", default=1.0, min=0
        ),
        "dew_margin": Field(
            "float", "Cel a dew point may exceed the temperature", default=0.5, min=0
        ),
        "humidity_margin": Field(
            "float", "%RH beyond 0–100 still accepted (chip accuracy)", default=2.0, min=0
        ),
        "tolerances": Field(
            "table",
            "per-quantity difference at which two sensors disagree; replaces the built-in ones",
            default={},
            check=check_number_table,
        ),
    }

    def __init__(self, *, module_id: str, options: Mapping[str, Any]) -> None:
        super().__init__(module_id=module_id, options=options)
        o = module_options(type(self), options)
        alt = o["altitude"]
        self.expected_pressure = None if alt is None else station_pressure(float(alt))
        self.pressure_band = float(o["pressure_band"])
        self.max_age = float(o["max_age"])
        self.pm_margin = float(o["pm_margin"])
        self.dew_margin = float(o["dew_margin"])
        self.humidity_margin = float(o["humidity_margin"])
        self.tolerance = dict(DEFAULT_TOLERANCE)
        self.tolerance.update({q: float(x) for q, x in dict(o["tolerances"]).items()})
        # latest (value, t) per sensor and quantity; per quantity, the sensors that report it
        self.latest: dict[str, dict[str, tuple[float, float]]] = {}
        self.by_quantity: dict[str, dict[str, tuple[float, float]]] = {}

    def judge(self, readings: Sequence[Reading]) -> Sequence[Verdict]:
        return [self._one(r) for r in readings]

    def _fresh(self, sensor: str, quantity: str, t: float) -> float | None:
        got = self.latest.get(sensor, {}).get(quantity)
        if got is None or abs(t - got[1]) > self.max_age:
            return None
        return got[0]

    def _one(self, r: Reading) -> Verdict:
        v = r.value
        if v is None:
            return NO_OPINION
        q, sensor, t = r.quantity, r.sensor, r.t
        self.latest.setdefault(sensor, {})[q] = (v, t)
        score = 0.0
        if q == "humidity":
            m = self.humidity_margin
            if v > 100.0 + m or v < -m:
                score = 1.0
        elif q in ("pm1", "pm2_5", "pm10"):
            score = self._pm(sensor, q, v, t)
        elif q in ("temperature", "dew_point"):
            other = self._fresh(sensor, "dew_point" if q == "temperature" else "temperature", t)
            if other is not None:
                temp, dew = (v, other) if q == "temperature" else (other, v)
                excess = dew - temp - self.dew_margin
                if excess > 0:
                    score = min(1.0, 0.6 + 0.2 * excess)
        elif q == "pressure" and self.expected_pressure is not None:
            off = abs(v / self.expected_pressure - 1.0) / self.pressure_band
            if off > 1.0:
                score = min(1.0, 0.5 * off)
        tol = self.tolerance.get(q)
        if tol is not None:
            peers = self.by_quantity.setdefault(q, {})
            peers[sensor] = (v, t)
            if len(peers) > 1:
                for other_sensor, (ov, ot) in peers.items():
                    if other_sensor != sensor and abs(t - ot) <= self.max_age:
                        off = abs(v - ov) / tol
                        if off > 1.0:
                            score = max(score, min(1.0, 0.5 * off))
        return (score, ("implausible",)) if score > 0 else NO_OPINION

    def _pm(self, sensor: str, q: str, v: float, t: float) -> float:
        m = self.pm_margin
        excess = 0.0
        if q != "pm1":  # a coarser fraction just arrived: the finer must not exceed it
            finer = self._fresh(sensor, "pm2_5" if q == "pm10" else "pm1", t)
            if finer is not None:
                excess = max(excess, finer - v - m)
        if q != "pm10":
            coarser = self._fresh(sensor, "pm10" if q == "pm2_5" else "pm2_5", t)
            if coarser is not None:
                excess = max(excess, v - coarser - m)
        return 0.0 if excess <= 0 else min(1.0, 0.6 + 0.04 * excess)


#: every module's sample `[[module]]` table (each class has its own as SAMPLE_CONFIG)
