"""The rule modules on real hourly weather with faults injected where the protocol puts them
(models/data/README.md): an event is caught when an alarm falls inside it or at most five
samples after it; clean series must stay nearly silent."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from gateway.config import settings as config
from gateway.core import plugins
from gateway.core.health import Health
from gateway.core.reading import Reading
from gateway.modules import rules
from gateway.modules.base import DetectionModule
from gateway.modules.chain import ModuleChain
from tests.weather import (
    ALTITUDE,
    COLUMNS,
    HOUR,
    RES,
    SEAM,
    SERIES,
    alarm_events,
    event_starts,
    flagged_at,
    share_caught,
    step_sigma,
)

MODULES = ("spikes", "stuck", "replay", "dropout", "warmup", "plausibility")
# A module's version changes with its verdicts (each batch names the versions that judged it)
VERSIONS = dict.fromkeys(MODULES, "1.0.0") | {
    "spikes": "1.1.0",  # the step back after a spike; values out of range are not steps
    "dropout": "1.1.0",  # a warm-up read without a value is not a failed read
}


# --------------------------------------------------------------------------- clean data


@pytest.mark.parametrize(
    ("kind", "flag", "quantities"),
    [
        ("spikes", "spike", ("temperature", "humidity")),
        ("stuck", "stuck", ("temperature", "pressure", "dew_point")),
        ("replay", "replay", ("temperature", "dew_point", "humidity", "pressure")),
    ],
)
def test_clean_series_are_nearly_silent(kind: str, flag: str, quantities: tuple[str, ...]) -> None:
    cls = plugins.module_class(kind)
    for q in quantities:
        mod = cls(module_id=kind, options={"resolutions": {q: RES[q]}})
        alarms = flagged_at(mod, q, SERIES[q], flag)
        assert alarm_events(alarms) * 1000 / len(SERIES[q]) <= 1.0, (q, alarms)


# --------------------------------------------------------------------------- spikes


@pytest.mark.parametrize("quantity", ["temperature", "dew_point"])
def test_spikes_are_caught(quantity: str) -> None:
    rng = random.Random(4)
    values = list(SERIES[quantity])
    sigma = step_sigma(values)
    events = []
    for p in event_starts(rng, 25):
        values[p] += rng.choice((-1, 1)) * rng.uniform(3, 10) * sigma
        events.append((p, p + 1))
    mod = rules.SpikeModule(module_id="s", options={"resolutions": {quantity: RES[quantity]}})
    alarms = flagged_at(mod, quantity, values, "spike")
    assert share_caught(alarms, events) >= 0.7
    big = [(s, e) for s, e in events if abs(values[s] - SERIES[quantity][s]) >= 6 * sigma]
    assert big and share_caught(alarms, big) >= 0.9


def _flat_barometer(n: int = 2000) -> list[float]:
    """A 1 hPa barometer on calm days: long flat runs, single-count steps between them."""
    rng = random.Random(3)
    out, v = [], 101_300.0
    for _ in range(n):
        if rng.random() < 0.04:
            v += rng.choice((-100.0, 100.0))
        out.append(v)
    return out


@pytest.mark.parametrize(("quantity", "values"), [
    ("pressure", _flat_barometer()),
    ("temperature", [20.0 + 0.1 * ((i // 37) % 2) for i in range(2000)]),  # 0.1 Cel toggles
])  # fmt: skip
def test_single_resolution_steps_after_flat_stretches_are_not_spikes(
    quantity: str, values: list[float]
) -> None:
    """With the chips' default resolutions (0.2 Pa, 0.01 Cel) the recent steps of a coarse
    sensor in a flat stretch are all zero; its own smallest step floors the spread."""
    mod = rules.SpikeModule(module_id="s", options={})
    assert flagged_at(mod, quantity, values, "spike") == []


def test_the_spread_floor_keeps_real_spikes_after_a_stuck_run() -> None:
    values = list(SERIES["pressure"][:1500])
    values[1000:1030] = [values[1000]] * 30  # stuck for 30 h
    values[1200] += 800.0  # 8 hPa for one hour
    mod = rules.SpikeModule(module_id="s", options={})
    alarms = flagged_at(mod, "pressure", values, "spike")
    assert alarms == [1201]  # the step back completes the pair


def test_a_level_shift_is_not_a_spike() -> None:
    values = list(SERIES["temperature"][:1500])
    values[1000:] = [v - 9.0 for v in values[1000:]]  # a jump that stays
    mod = rules.SpikeModule(module_id="s", options={"resolutions": {"temperature": 0.1}})
    assert flagged_at(mod, "temperature", values, "spike") == []


def _pressure_spike_test_series() -> list[float]:
    """Real station pressure (1 hPa steps, spread 1 hPa at hour 1200): a 25 hPa step there is a
    spike by itself (threshold 16), not only as a pair."""
    return list(SERIES["pressure"][:1500])


def _spikes(values: Sequence[float | None]) -> list[int]:
    mod = rules.SpikeModule(module_id="s", options={"resolutions": {"pressure": 100.0}})
    return flagged_at(mod, "pressure", values, "spike")


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_the_step_back_after_a_spike_is_not_a_spike(sign: float) -> None:
    values = _pressure_spike_test_series()
    values[1200] += sign * 2500.0
    assert _spikes(values) == [1200]  # not 1201, the correct reading after it
    # a failed read in between changes nothing
    gap: list[float | None] = list(values)
    gap[1201] = None
    assert _spikes(gap) == [1200]


def test_a_step_back_past_the_old_level_is_a_spike() -> None:
    """The step back is judged from the level before the spike: one that overshoots it by a
    spike's size is a spike the other way (a reversed sign alone would let it through)."""
    values = _pressure_spike_test_series()
    values[1200] += 2500.0
    values[1201] -= 2500.0
    assert _spikes(values) == [1200, 1201]


def test_a_spike_right_after_a_jump_that_stays() -> None:
    values = _pressure_spike_test_series()
    values[1200:] = [v + 3000.0 for v in values[1200:]]  # 30 hPa that stay
    values[1201] -= 6000.0  # then one hour 30 hPa below the old level
    # the jump is a spike by itself (as before), the drop too; the readings after it are at
    # the new level, the jump's, and are not flagged
    assert _spikes(values) == [1200, 1201]


def test_a_value_out_of_range_is_no_step() -> None:
    """A value the ranges module (before this one in the chain) found impossible is not part of
    the series: the good reading after it is no spike, and the readings after that still see
    real spikes (the impossible step does not inflate the spread)."""
    values = _pressure_spike_test_series()
    chain = ModuleChain(
        [
            plugins.module_class("ranges")(module_id="physics", options={}),
            rules.SpikeModule(module_id="s", options={"resolutions": {"pressure": 100.0}}),
        ],
        health=Health(),
        budgets=[1.0, 1.0],
    )
    impossible = {1100 + 20 * k: (20_000.0, 150_000.0)[k % 2] for k in range(5)}
    values[1300] += 1000.0  # a real 10 hPa spike, caught as a pair (by the step back)
    flagged: dict[int, list[str]] = {}
    for i, v in enumerate(values):
        r = Reading("baro", "pressure", "Pa", impossible.get(i, v), i * HOUR, True)
        chain.judge([r])
        if r.flags:
            flagged[i] = r.flags
    assert flagged == {**{i: ["range"] for i in impossible}, 1301: ["spike"]}


# --------------------------------------------------------------------------- stuck


def test_stuck_runs_are_caught_and_the_limit_knows_the_resolution() -> None:
    rng = random.Random(5)
    values = list(SERIES["temperature"])
    events = []
    for p in event_starts(rng, 25):
        n = rng.randint(12, 48)
        values[p : p + n] = [values[p]] * n
        events.append((p, p + n))
    mod = rules.StuckModule(module_id="s", options={"resolutions": {"temperature": 0.1}})
    assert share_caught(flagged_at(mod, "temperature", values, "stuck"), events) == 1.0

    # the 1 hPa barometer repeats often, so its limit grows past the floor (and past real runs)
    baro = rules.StuckModule(module_id="b", options={"resolutions": {"pressure": 100.0}})
    flagged_at(baro, "pressure", SERIES["pressure"][:2000], "stuck")
    rate = baro.state["w/pressure"].rep
    assert 0.4 < rate < 0.8
    assert baro.limit("pressure", rate) > 17 > baro.limit("temperature", 0.05)
    values = list(SERIES["pressure"])
    events = []
    for p in event_starts(rng, 20):
        n = rng.randint(24, 48)
        values[p : p + n] = [values[p]] * n
        events.append((p, p + n))
    baro = rules.StuckModule(module_id="b", options={"resolutions": {"pressure": 100.0}})
    assert share_caught(flagged_at(baro, "pressure", values, "stuck"), events) == 1.0


def test_a_saturated_hygrometer_is_not_stuck_but_a_dead_one_is() -> None:
    """Fog holds a hygrometer at 100 %RH for hours (the series' highest value, often seen); the
    same run anywhere else is stuck, and so is a run at 100 far longer than any fog before."""
    values = list(SERIES["humidity"])
    fog = [(s, e) for s, e in _value_runs(values, 100.0) if e - s >= 12]
    assert len(fog) >= 8  # the real series has many long runs at 100

    def stuck(series: list[float]) -> list[int]:
        mod = rules.StuckModule(module_id="h", options={"resolutions": {"humidity": 1.0}})
        return flagged_at(mod, "humidity", series, "stuck")

    alarms = stuck(values)
    assert sum(any(s <= a < e for a in alarms) for s, e in fog) <= 1  # the year's longest fog
    dead = values[:6000] + [100.0] * 400 + values[6400:]
    assert any(6000 <= a < 6100 for a in stuck(dead))


def _value_runs(values: Sequence[float], value: float) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, v in enumerate([*values, math.nan]):
        if v == value and start is None:
            start = i
        elif v != value and start is not None:
            runs.append((start, i))
            start = None
    return runs


# --------------------------------------------------------------------------- replay


@pytest.mark.parametrize("quantity", ["temperature", "dew_point", "humidity"])
def test_replayed_segments_are_caught(quantity: str) -> None:
    rng = random.Random(6)
    clean = SERIES[quantity]
    values = list(clean)
    events = []
    for p in event_starts(rng, 20, spacing=350):
        n = rng.randint(24, 72)
        src = rng.randrange(0, p - n)
        values[p : p + n] = values[src : src + n]  # what the gateway sent before
        events.append((p, p + n))
    mod = rules.ReplayModule(module_id="r", options={"resolutions": {quantity: RES[quantity]}})
    assert share_caught(flagged_at(mod, quantity, values, "replay"), events) >= 0.9


def test_flat_windows_never_count_as_replays() -> None:
    mod = rules.ReplayModule(module_id="r", options={})
    values = [20.0 + 0.01 * (i % 2) for i in range(500)] + [20.0] * 500
    assert flagged_at(mod, "temperature", values, "replay") == []


# --------------------------------------------------------------------------- dropout, warm-up


def _judge_timed(mod: DetectionModule, points: Sequence[tuple[float, float | None]]) -> list[Any]:
    out = []
    for t, v in points:
        flags = ["sensor-error"] if v is None else []
        r = Reading("bme", "temperature", "Cel", v, t, True, flags=flags)
        out.append(mod.judge([r])[0])
    return out


def test_dropouts_flag_the_next_good_reading() -> None:
    temps = SERIES["temperature"][:60]
    points: list[tuple[float, float | None]] = [(i * 10.0, v) for i, v in enumerate(temps)]
    points[20] = (200.0, None)  # one failed read
    points[21] = (210.0, None)
    del points[40:45]  # five reads never happened
    verdicts = _judge_timed(rules.DropoutModule(module_id="d", options={}), points)
    flagged = [i for i, (_, f) in enumerate(verdicts) if "dropout" in f]
    assert flagged == [22, 40]
    assert verdicts[40][0] > verdicts[22][0] >= 0.5


def _judge_flagged(
    mod: DetectionModule, points: Sequence[tuple[float, float | None, tuple[str, ...]]]
) -> list[int]:
    """Indices of the readings flagged `dropout`; points are (t, value, driver flags)."""
    out = []
    for i, (t, v, flags) in enumerate(points):
        r = Reading("pm", "pm2_5", "ug/m3", v, t, True, flags=list(flags))
        if "dropout" in mod.judge([r])[0][1]:
            out.append(i)
    return out


WARMING = (None, ("warmup",))  # a PM sensor's fan spinning up: a read on time, without a value
FAILED = (None, ("sensor-error",))


def test_a_warm_up_read_without_a_value_is_no_dropout() -> None:
    good = [(12.0 + 0.1 * (i % 3), ()) for i in range(40)]
    start = [WARMING, WARMING, *good]  # the series starts warming up
    points = [(i * 1.0, v, f) for i, (v, f) in enumerate(start)]
    assert _judge_flagged(rules.DropoutModule(module_id="d", options={}), points) == []

    # a sensor woken again (duty cycle, or re-opened) warms up again mid-series
    later = [*good[:20], WARMING, WARMING, WARMING, *good[20:]]
    points = [(i * 1.0, v, f) for i, (v, f) in enumerate(later)]
    assert _judge_flagged(rules.DropoutModule(module_id="d", options={}), points) == []


def test_failed_reads_stay_dropouts_around_a_warm_up() -> None:
    good = [(12.0, ())] * 40
    mod = rules.DropoutModule(module_id="d", options={})
    # failed reads, then the re-opened sensor warms up: the hole is still there
    series = [*good[:20], FAILED, FAILED, WARMING, WARMING, *good[20:]]
    points = [(i * 1.0, v, f) for i, (v, f) in enumerate(series)]
    assert _judge_flagged(mod, points) == [24]
    # a failed first read is a failure, a failed read that also says warmup too
    for first in (FAILED, (None, ("warmup", "sensor-error"))):
        series = [first, *good[:5]]
        points = [(i * 1.0, v, f) for i, (v, f) in enumerate(series)]
        assert _judge_flagged(rules.DropoutModule(module_id="d", options={}), points) == [1]


def test_warmup_after_start_failures_and_long_gaps() -> None:
    temps = SERIES["temperature"][:80]
    points: list[tuple[float, float | None]] = [(i * 10.0, v) for i, v in enumerate(temps)]
    points[30] = (300.0, None)
    points[60:] = [(t + 3600.0, v) for t, v in points[60:]]  # off for an hour
    mod = rules.WarmupModule(module_id="w", options={"readings": 3})
    verdicts = _judge_timed(mod, points)
    flagged = [i for i, (s, f) in enumerate(verdicts) if "warmup" in f]
    assert flagged == [0, 1, 2, 31, 32, 33, 60, 61, 62]
    assert all(s == 0.0 for s, _ in verdicts)


# --------------------------------------------------------------------------- plausibility


def _weather(
    mod: DetectionModule, hours: range, edit: dict[tuple[int, str], float] | None = None
) -> dict[tuple[int, str], Any]:
    edit = edit or {}
    out = {}
    for i in hours:
        readings = [
            Reading("met", q, "", edit.get((i, q), SERIES[q][i]), i * HOUR, True) for q in COLUMNS
        ]
        for r, verdict in zip(readings, mod.judge(readings), strict=True):
            out[(i, r.quantity)] = verdict
    return out


def _plausibility(**options: Any) -> rules.PlausibilityModule:
    return rules.PlausibilityModule(module_id="p", options={"altitude": ALTITUDE, **options})


def test_plausibility_is_silent_on_real_weather() -> None:
    verdicts = _weather(_plausibility(), range(len(SERIES["temperature"])))
    flagged = {i for (i, _), (_, f) in verdicts.items() if f}
    assert flagged <= SEAM  # nothing but the seam


def test_implausible_combinations_are_caught() -> None:
    rng = random.Random(7)
    edit: dict[tuple[int, str], float] = {}
    hours = event_starts(rng, 30, spacing=250)
    for n, i in enumerate(hours):
        kind = n % 3
        if kind == 0:  # dew point above temperature
            edit[(i, "dew_point")] = SERIES["temperature"][i] + rng.uniform(1.0, 5.0)
        elif kind == 1:  # relative humidity above 100
            edit[(i, "humidity")] = rng.uniform(103.0, 120.0)
        else:  # pressure of a different altitude (or a mis-scaled reading)
            edit[(i, "pressure")] = SERIES["pressure"][i] * rng.choice((0.85, 1.12))
    verdicts = _weather(_plausibility(), range(len(SERIES["temperature"])), edit)
    alarmed = {k for k, (_, f) in verdicts.items() if "implausible" in f}
    assert set(edit) <= alarmed
    # read together, a dew point above the temperature flags both; nothing else is flagged
    assert {i for i, _ in alarmed} - SEAM == {i for i, _ in edit}


def test_a_drifting_member_of_the_dew_point_triple_is_implausible() -> None:
    """Temperature, humidity and dew point of one station (here three sensors, co-located)
    must agree with the Magnus formula; a sensor that drifts away breaks it after a few
    readings, a single odd hour does not."""
    mod = _plausibility()
    sensors = {"temperature": "t", "dew_point": "d", "humidity": "h"}
    flagged = []
    for i in range(3000):
        off = 4.0 if 2000 <= i < 2100 else 0.0  # the thermometer reads 4 Cel high
        readings = [
            Reading(sensors[q], q, "", SERIES[q][i] + (off if q == "temperature" else 0.0),
                    i * HOUR, True)
            for q in sensors
        ]  # fmt: skip
        if any("implausible" in f for _, f in mod.judge(readings)) and i not in SEAM:
            flagged.append(i)
    assert flagged and 2000 <= flagged[0] <= 2005
    assert all(2000 <= i < 2100 for i in flagged)


def test_pm_fractions_and_disagreeing_sensors() -> None:
    mod = _plausibility(max_age=60.0)

    def one(sensor: str, q: str, v: float, t: float) -> tuple[float, tuple[str, ...]]:
        return tuple(mod.judge([Reading(sensor, q, "", v, t, True)])[0])  # type: ignore[return-value]

    assert one("pm", "pm2_5", 12.0, 0.0)[1] == ()
    assert one("pm", "pm10", 15.0, 0.0)[1] == ()
    assert one("pm", "pm2_5", 30.0, 10.0)[1] == ("implausible",)  # above PM10 of 10 s ago
    assert one("pm", "pm10", 40.0, 20.0)[1] == ()
    assert one("other", "pm2_5", 90.0, 20.0)[1] == ()  # a different sensor's PM10 is not its own
    assert one("pm", "pm2_5", 50.0, 200.0)[1] == ()  # PM10 is too old to compare

    assert one("bme", "temperature", 21.0, 0.0)[1] == ()
    assert one("sht", "temperature", 22.5, 5.0)[1] == ()
    score, flags = one("scd", "temperature", 27.0, 8.0)
    assert flags == ("implausible",) and score >= 0.5
    assert one("scd", "temperature", 22.0, 500.0)[1] == ()  # the others are stale by now


def test_pressure_check_needs_an_altitude() -> None:
    mod = rules.PlausibilityModule(module_id="p", options={})
    assert mod.judge([Reading("b", "pressure", "Pa", 50_000.0, 0.0, True)])[0] == (0.0, ())
    assert abs(rules.station_pressure(ALTITUDE) - 98_100) < 200
    assert abs(rules.dew_point(20.0, 50.0) - 9.3) < 0.1


# --------------------------------------------------------------------------- wiring


HEADER = """\
[device]
name = "rules-test"
key_file = "device.key"

[[sensor]]
id = "climate"
driver = "simulated"
kind = "climate"
"""


@pytest.mark.parametrize("kind", MODULES)
def test_each_module_loads_through_its_entry_point_and_sample(kind: str, tmp_path: Path) -> None:
    cls = plugins.module_class(kind)
    assert kind in plugins.modules() and cls.name == kind and cls.version == VERSIONS[kind]
    assert cls.__doc__ and all(f.help for f in cls.CONFIG.values())
    sample = plugins.module(kind).sample_text()
    assert sample in rules.SAMPLE_CONFIG
    (mc,) = config.loads(HEADER + "\n" + sample, base_dir=tmp_path).modules
    assert mc.kind == kind
    cls(module_id=mc.id, options=mc.options)


def test_all_samples_load_together_and_the_chain_runs(tmp_path: Path) -> None:
    cfg = config.loads(HEADER + "\n" + rules.SAMPLE_CONFIG, base_dir=tmp_path)
    assert [m.kind for m in cfg.modules] == list(MODULES)
    health = Health()
    chain = ModuleChain.from_config(cfg.modules, health=health)
    flagged: set[str] = set()
    for i in range(400):
        readings = [
            Reading("climate", q, "", SERIES[q][i], i * HOUR, True)
            for q in ("temperature", "humidity", "pressure")
        ]
        if i == 200:
            readings[1].value = 130.0
        chain.judge(readings)
        for r in readings:
            assert 0.0 <= r.score <= 1.0 and "module-error" not in r.flags
            flagged.update(r.flags)
    assert {"warmup", "implausible"} <= flagged
    assert [e[0] for e in chain.batch_entries()] == list(MODULES)
