"""Rule module:
`plausibility`: combinations no healthy set of sensors produces: PM2.5 above PM10, dew point
above temperature or off the dew point that temperature and humidity imply, relative humidity
outside 0-100, station pressure far from what the configured altitude implies, two sensors of
one quantity and one placement disagreeing.

State is kept per series (`sensor/quantity`) and a reading is judged only from what came
before it: the chain calls `judge` once per sensor read, in time order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from gateway.core.fields import PLACEMENTS, Field, placement_key, placement_problem
from gateway.core.manifest import Manifest
from gateway.core.reading import Reading
from gateway.modules.base import NO_OPINION, DetectionModule, Verdict
from gateway.modules.series import (
    DEFAULT_TOLERANCE,
    check_number_table,
    module_options,
)

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


def _check_placements(value: Any) -> str | None:
    if not isinstance(value, dict):
        return 'expected a table like { co2 = "indoor", garden = "outdoor" }'
    for sensor, placement in value.items():
        if not isinstance(placement, str):
            return f"{sensor}: expected a placement (a string), got {placement!r}"
        problem = placement_problem(placement)
        if problem:
            return f"{sensor}: {problem}"
    return None


class PlausibilityModule(DetectionModule):
    """Cross-quantity and cross-sensor checks, on the latest value of every series.

    On the same sensor (values at most `max_age` apart): PM1 above PM2.5 or PM2.5 above PM10
    (beyond `pm_margin`). Dew point against the temperature and humidity of the same sensor or,
    when it has none, of another sensor in the same place: a dew point above the temperature
    (beyond `dew_margin`), or, for `dew_persist` readings in a row, more than `dew_tolerance` off
    the dew point that temperature and humidity imply (Magnus): one of the three has drifted or
    is offset. On its own: relative humidity outside 0–100 (the dew point it implies would lie
    above the temperature), station pressure more than `pressure_band` off the standard
    atmosphere at `altitude` (when configured). Across sensors: two sensors of one place and of
    a quantity in `tolerances` that differ by more than its tolerance within `max_age`. A
    reading is compared with the others of the same call and the latest of earlier ones; a
    reading that is part of an implausible combination is flagged (the readings of one call:
    each of them, since none can be blamed alone).

    "The same place" is the sensors' `placement` (`placements`, filled in by the config loader
    from the `[[sensor]]` tables): an indoor CO2 sensor's temperature and humidity say nothing
    about an outdoor sensor's, so they are never compared. Sensors without a placement are one
    place together. Pressure is not compared across placements either, although indoor and
    outdoor air share it: a placement may as well be a mast or another floor, and the
    `altitude` check still judges every barometer on its own.
    """

    name = "plausibility"
    version = "1.0.0"
    quantities = _PLAUSIBILITY_QUANTITIES
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
        "dew_tolerance": Field(
            "float",
            "Cel a dew point may differ from the one temperature and humidity imply",
            default=3.0,
            min=0.1,
        ),
        "dew_persist": Field(
            "int",
            "readings in a row beyond `dew_tolerance` before they are implausible",
            default=2,
            min=1,
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
        PLACEMENTS: Field(
            "table",
            "sensor id -> placement, filled in from the `placement` of each [[sensor]] (set it "
            "there): sensors are compared only with sensors of the same placement",
            default={},
            check=_check_placements,
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
        self.dew_tolerance = float(o["dew_tolerance"])
        self.dew_persist = int(o["dew_persist"])
        self.humidity_margin = float(o["humidity_margin"])
        self.tolerance = dict(DEFAULT_TOLERANCE)
        self.tolerance.update({q: float(x) for q, x in dict(o["tolerances"]).items()})
        # sensor -> the key of its place; sensors not listed share the place "" (no placement)
        self.place = {str(k): placement_key(v) for k, v in dict(o[PLACEMENTS]).items()}
        # latest (value, t) per sensor and quantity; per place and quantity, the sensors that
        # report it
        self.latest: dict[str, dict[str, tuple[float, float]]] = {}
        self.by_quantity: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
        # per place: the latest (value, t) of each quantity, whichever sensor there read it
        self.site: dict[str, dict[str, tuple[float, float]]] = {}
        self.off_dew: dict[str, int] = {}  # per series: readings in a row off the Magnus dew point

    def judge(self, readings: Sequence[Reading]) -> Sequence[Verdict]:
        # The readings of one call were taken together: each is compared with all of them, not
        # only with those before it in the batch (whose order means nothing).
        for r in readings:
            if r.value is not None:
                self.latest.setdefault(r.sensor, {})[r.quantity] = (r.value, r.t)
                self.site.setdefault(self._place(r.sensor), {})[r.quantity] = (r.value, r.t)
        return [self._one(r) for r in readings]

    def _place(self, sensor: str) -> str:
        return self.place.get(sensor, "")

    def _fresh(self, sensor: str, quantity: str, t: float) -> float | None:
        got = self.latest.get(sensor, {}).get(quantity)
        if got is None or abs(t - got[1]) > self.max_age:
            return None
        return got[0]

    def _near(self, sensor: str, quantity: str, t: float) -> float | None:
        """The sensor's own fresh value, else the latest fresh one of any sensor in its place."""
        own = self._fresh(sensor, quantity, t)
        if own is not None:
            return own
        got = self.site.get(self._place(sensor), {}).get(quantity)
        if got is None or abs(t - got[1]) > self.max_age:
            return None
        return got[0]

    def _one(self, r: Reading) -> Verdict:
        v = r.value
        if v is None:
            return NO_OPINION
        q, sensor, t = r.quantity, r.sensor, r.t
        score = 0.0
        if q == "humidity":
            m = self.humidity_margin
            if v > 100.0 + m or v < -m:
                score = 1.0
        if q in ("pm1", "pm2_5", "pm10"):
            score = self._pm(sensor, q, v, t)
        elif q in ("temperature", "dew_point", "humidity"):
            score = max(score, self._dew(r.name, sensor, q, v, t))
        elif q == "pressure" and self.expected_pressure is not None:
            off = abs(v / self.expected_pressure - 1.0) / self.pressure_band
            if off > 1.0:
                score = min(1.0, 0.5 * off)
        tol = self.tolerance.get(q)
        if tol is not None:
            peers = self.by_quantity.setdefault((self._place(sensor), q), {})
            peers[sensor] = (v, t)
            if len(peers) > 1:
                for other_sensor, (ov, ot) in peers.items():
                    if other_sensor != sensor and abs(t - ot) <= self.max_age:
                        off = abs(v - ov) / tol
                        if off > 1.0:
                            score = max(score, min(1.0, 0.5 * off))
        return (score, ("implausible",)) if score > 0 else NO_OPINION

    def _dew(self, key: str, sensor: str, q: str, v: float, t: float) -> float:
        """Dew point against temperature (above it) and against temperature and humidity (the
        Magnus dew point). A single reading off the Magnus value is not enough: stitched or
        interpolated records and sensors answering a few seconds apart disagree for a moment; a
        drifting or offset sensor keeps disagreeing."""
        temp = v if q == "temperature" else self._near(sensor, "temperature", t)
        dew = v if q == "dew_point" else self._near(sensor, "dew_point", t)
        if temp is None or dew is None:
            return 0.0
        score = 0.0
        excess = dew - temp - self.dew_margin
        if excess > 0 and q != "humidity":
            score = min(1.0, 0.6 + 0.2 * excess)
        hum = v if q == "humidity" else self._near(sensor, "humidity", t)
        if hum is None or not 0.0 < hum <= 100.0 + self.humidity_margin:
            return score
        off = abs(dew - dew_point(temp, min(hum, 100.0))) - self.dew_tolerance
        run = self.off_dew.get(key, 0) + 1 if off > 0 else 0
        self.off_dew[key] = run
        if run >= self.dew_persist:
            score = max(score, min(1.0, 0.5 + 0.1 * off))
        return score

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


MANIFEST = Manifest(
    name="plausibility",
    kind="module",
    factory=PlausibilityModule,
    sample="plausibility.sample.toml",
    readme="../../docs/modules/plausibility.md",
)
