"""The drift module (and the dew-point consistency check that catches drift in a weather
station's triple) on crafted series and on real hourly weather with drifts injected where the
protocol puts them (models/data/README.md): a drift counts as caught when an alarm falls
inside it or at most five samples after it; clean series must stay nearly silent."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence

import pytest

from gateway.core import plugins
from gateway.core.reading import Reading
from gateway.modules.base import DetectionModule
from gateway.modules.drift import DriftModule
from gateway.modules.plausibility import PlausibilityModule
from tests.weather import (
    HOUR,
    RES,
    SERIES,
    alarm_events,
    event_starts,
    flagged_at,
    share_caught,
    step_sigma,
)


def _drift(mod: DetectionModule, quantity: str, values: Sequence[float]) -> list[int]:
    return flagged_at(mod, quantity, values, "drift")


def _crafted(n: int, seed: int = 1) -> list[float]:
    """An hourly series with a daily cycle, slow weather-like wander (std 1 Cel) and noise."""
    rng = random.Random(seed)
    wander = 0.0
    out = []
    for i in range(n):
        wander = 0.98 * wander + rng.gauss(0, 0.2)
        out.append(round(15 + 5 * math.sin(2 * math.pi * i / 24) + wander + rng.gauss(0, 0.3), 1))
    return out


def _module(quantity: str = "temperature", **options: object) -> DriftModule:
    return DriftModule(module_id="d", options={"resolutions": {quantity: 0.1}, **options})


# --------------------------------------------------------------------------- crafted series


def test_a_clean_series_with_a_daily_cycle_is_silent() -> None:
    assert _drift(_module(), "temperature", _crafted(3000)) == []


def test_a_level_shift_is_flagged_within_it_and_then_accepted() -> None:
    values = _crafted(3000)
    values[2000:] = [v + 6.0 for v in values[2000:]]  # a sensor that reads 6 Cel high from now
    alarms = _drift(_module(), "temperature", values)
    assert alarms and 2000 <= alarms[0] < 2012  # within hours
    assert alarm_events(alarms) == 1  # one alarm, not a flicker
    assert alarms[-1] < 2000 + 24 * 14  # the new level becomes the expected one


def test_a_slow_ramp_is_flagged_within_its_span() -> None:
    values = _crafted(3000)
    for i in range(2000, 2240):  # triangular, peak 14 Cel after five days
        values[i] += 14.0 * (1 - abs((i - 2120) / 120))
    alarms = _drift(_module(), "temperature", values)
    assert share_caught(alarms, [(2000, 2240)]) == 1.0
    assert all(2000 <= a < 2245 + 48 for a in alarms)


def test_single_outliers_are_not_drifts() -> None:
    values = _crafted(3000)
    for i in range(1500, 3000, 97):
        values[i] += 15.0  # spikes are the spikes module's
    assert _drift(_module(), "temperature", values) == []


def test_concentrations_are_judged_on_a_log_scale() -> None:
    rng = random.Random(3)
    level, pm = 0.0, []
    for _ in range(3000):  # log-normal wander: pollution episodes multiply the level
        level = 0.97 * level + rng.gauss(0, 0.12)
        pm.append(round(25 * math.exp(level), 1))
    mod = _module("pm2_5")
    assert alarm_events(_drift(mod, "pm2_5", pm)) <= 1
    doubled = pm[:2000] + [3 * v for v in pm[2000:2200]] + pm[2200:]
    assert share_caught(_drift(_module("pm2_5"), "pm2_5", doubled), [(2000, 2200)]) == 1.0


def test_loads_through_its_entry_point() -> None:
    cls = plugins.module_class("drift")
    assert cls is DriftModule and cls.name == "drift" and cls.__doc__
    assert all(f.help for f in cls.CONFIG.values())


# --------------------------------------------------------------------------- real weather


def test_clean_weather_is_nearly_silent() -> None:
    for q in ("temperature", "dew_point", "humidity", "pressure"):
        alarms = _drift(_module(q, resolutions={q: RES[q]}), q, SERIES[q])
        assert alarm_events(alarms) * 1000 / len(SERIES[q]) <= 1.0, (q, alarms)


def test_a_failing_sensor_is_flagged_on_real_temperature() -> None:
    """A level far outside the weather (a sensor next to a heat source, a wrong scale). One
    series alone cannot tell a few days' offset of 10 Cel from weather: the module needs about
    three times the weather's own swings (a station's triple does better, below)."""
    rng = random.Random(8)
    values = list(SERIES["temperature"])
    events = []
    for p in event_starts(rng, 7, spacing=1000):
        n = rng.randint(96, 240)
        sign = rng.choice((-1, 1))
        for i in range(p, p + n):
            values[i] += sign * 30.0
        events.append((p, p + n))
    alarms = _drift(_module(), "temperature", values)
    assert share_caught(alarms, events) >= 0.8
    false = [a for a in alarms if not any(s <= a < e + 48 for s, e in events)]
    assert false == []


def _triple(
    drifting: str, edit: dict[int, float], plaus: PlausibilityModule, drift: DriftModule
) -> list[int]:
    """Hourly T, dew point and RH of the station through both modules; the hours at which the
    drifting quantity was flagged (drift or implausible)."""
    out = []
    for i in range(len(SERIES["temperature"])):
        readings = [
            Reading("met", q, "", SERIES[q][i] + (edit.get(i, 0.0) if q == drifting else 0.0),
                    i * HOUR, True)
            for q in ("temperature", "dew_point", "humidity")
        ]  # fmt: skip
        verdicts = [plaus.judge(readings), drift.judge(readings)]
        k = [r.quantity for r in readings].index(drifting)
        if any(v[k][1] for v in verdicts):
            out.append(i)
    return out


@pytest.mark.parametrize("quantity", ["temperature", "dew_point", "humidity"])
def test_protocol_drifts_in_a_weather_station_are_caught(quantity: str) -> None:
    """Triangular drifts over 96-240 h peaking at 5-15 sigma of the hourly steps: within the
    weather's own swings for one series, but they break the dew point that temperature and
    humidity imply."""
    rng = random.Random(9)
    sigma = step_sigma(SERIES[quantity])
    edit: dict[int, float] = {}
    events = []
    for p in event_starts(rng, 14, spacing=500):
        n = rng.randint(96, 240)
        peak = rng.choice((-1, 1)) * rng.uniform(5, 15) * sigma
        for k in range(n):
            edit[p + k] = peak * (1 - abs(2 * (k + 1) / (n + 1) - 1))
        events.append((p, p + n))
    res = {q: RES[q] for q in ("temperature", "dew_point", "humidity")}
    plaus = PlausibilityModule(module_id="p", options={})
    alarms = _triple(quantity, edit, plaus, _module(quantity, resolutions=res))
    assert share_caught(alarms, events) >= 0.9
    clean = _triple(quantity, {}, PlausibilityModule(module_id="p", options={}),
                    _module(quantity, resolutions=res))  # fmt: skip
    assert alarm_events(clean) * 1000 / len(SERIES[quantity]) <= 1.0
