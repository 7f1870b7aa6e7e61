"""The simulated sensor as a user meets it: repeatable, realistic over days, faulty on request."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from collections.abc import Iterable
from itertools import pairwise
from statistics import mean
from typing import Any

import pytest

from drivers.base import Measurement
from drivers.simulated import FAULTS, KIND_QUANTITIES, QUANTITY_UNITS, SimulatedSensor, units_for
from gateway.core import plugins
from gateway.core.errors import ConfigError, SensorError
from gateway.core.reading import Reading
from gateway.modules.ranges import RangeModule

JAN_1 = 1_704_067_200.0  # 2024-01-01 00:00 UTC
JUN_1 = 1_717_200_000.0  # 2024-06-01 00:00 UTC
TEN_MIN = 600.0

# What a real station could plausibly report at sea level in a temperate climate.
REALISTIC = {
    "temperature": (-25.0, 40.0),
    "humidity": (0.0, 100.0),
    "pressure": (95_000.0, 107_000.0),
    "pm1": (0.0, 300.0),
    "pm2_5": (0.0, 300.0),
    "pm10": (0.0, 500.0),
    "co2": (380.0, 5_000.0),
}
RESOLUTION = {
    "temperature": 0.01,
    "humidity": 0.01,
    "pressure": 1.0,
    "pm1": 0.1,
    "pm2_5": 0.1,
    "pm10": 0.1,
    "co2": 1.0,
}


def sensor(sensor_id: str = "sim", **options: Any) -> SimulatedSensor:
    return SimulatedSensor(sensor_id=sensor_id, options=options)


def times(start: float = JUN_1, step: float = TEN_MIN, n: int = 6 * 24 * 7) -> list[float]:
    return [start + k * step for k in range(n)]


def run(s: SimulatedSensor, at: Iterable[float]) -> list[dict[str, float]]:
    """One dict per read; a dropout shows as an empty dict."""
    out: list[dict[str, float]] = []
    for t in at:
        try:
            row = {m.quantity: m.value for m in s.read(t)}
        except SensorError:
            out.append({})
            continue
        assert all(v is not None for v in row.values())  # the simulator never fails one quantity
        out.append({q: v for q, v in row.items() if v is not None})
    return out


def series(rows: list[dict[str, float]], q: str) -> list[float]:
    return [r[q] for r in rows]


def longest_run(values: list[float]) -> int:
    best = cur = 1
    for a, b in pairwise(values):
        cur = cur + 1 if a == b else 1
        best = max(best, cur)
    return best


# --- registration and shape --------------------------------------------------------------------


def test_registered_as_a_driver_like_any_other() -> None:
    cls = plugins.driver_class("simulated")
    assert cls is SimulatedSensor
    assert cls.name == "simulated"
    assert cls.blocking is False
    assert cls.default_interval == 10.0
    for key, field in cls.CONFIG.items():
        assert field.help, key
        assert not field.required, key  # `driver = "simulated"` alone is a working sensor


@pytest.mark.parametrize("kind", list(KIND_QUANTITIES))
def test_each_kind_returns_its_quantities_with_senml_units(kind: str) -> None:
    s = sensor(kind=kind)
    read = s.read(JUN_1)
    assert all(isinstance(m, Measurement) and m.flags == () for m in read)
    assert [m.quantity for m in read] == list(KIND_QUANTITIES[kind])
    assert dict(s.quantities) == units_for(kind)
    assert all(isinstance(m.value, float) for m in read)


def test_kinds_and_units() -> None:
    assert units_for("climate") == {"temperature": "Cel", "humidity": "%RH", "pressure": "Pa"}
    assert units_for("pm") == {"pm1": "ug/m3", "pm2_5": "ug/m3", "pm10": "ug/m3"}
    assert units_for("co2") == {"co2": "ppm", "temperature": "Cel", "humidity": "%RH"}
    assert units_for("all") == dict(QUANTITY_UNITS)
    assert len(units_for("all")) == 7


def test_quantity_subset() -> None:
    s = sensor(kind="all", quantities=["co2", "temperature"])
    assert dict(s.quantities) == {"temperature": "Cel", "co2": "ppm"}
    assert [m.quantity for m in s.read(JUN_1)] == ["temperature", "co2"]
    only = run(sensor(kind="climate", quantities=["humidity"]), times(n=50))
    assert [set(r) for r in only] == [{"humidity"}] * 50


# --- repeatability -----------------------------------------------------------------------------


def test_same_seed_same_times_same_readings() -> None:
    at = times(n=500)
    assert run(sensor(kind="all", seed=7), at) == run(sensor(kind="all", seed=7), at)


def test_different_seed_or_sensor_id_gives_different_readings() -> None:
    at = times(n=50)
    base = run(sensor(kind="all", seed=7), at)
    assert run(sensor(kind="all", seed=8), at) != base
    assert run(sensor("other", kind="all", seed=7), at) != base


def test_seed_does_not_depend_on_the_process_hash_salt() -> None:
    code = (
        "from drivers.simulated import SimulatedSensor as S\n"
        "s = S(sensor_id='balcony', options={'kind': 'all', 'seed': 3})\n"
        "print([m.value for t in range(5) for m in s.read(1717200000.0 + 600 * t)])\n"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": salt},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for salt in ("1", "2")
    }
    assert len(outputs) == 1


def test_time_going_backwards_is_survived() -> None:
    s = sensor(kind="all")
    s.read(JUN_1 + 3600)
    assert len(s.read(JUN_1)) == 7


# --- realism -----------------------------------------------------------------------------------


def hour(t: float) -> float:
    return (t % 86400.0) / 3600.0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_daily_cycle(seed: int) -> None:
    at = times(JAN_1, n=6 * 24 * 10)
    rows = run(sensor(kind="all", seed=seed), at)
    indoor = run(sensor(kind="co2", seed=seed), at)

    def avg(rs: list[dict[str, float]], q: str, lo: float, hi: float) -> float:
        return mean(r[q] for t, r in zip(at, rs, strict=True) if lo <= hour(t) < hi)

    # warmest mid-afternoon, coldest before dawn; relative humidity the other way round
    assert avg(rows, "temperature", 13, 16) > avg(rows, "temperature", 3, 6) + 2.0
    assert avg(rows, "humidity", 3, 6) > avg(rows, "humidity", 13, 16) + 10.0
    # morning rush hour is dustier than midday
    assert avg(rows, "pm2_5", 7, 9) > 1.2 * avg(rows, "pm2_5", 12, 15)
    # people asleep in a closed room
    assert avg(indoor, "co2", 3, 6) > avg(indoor, "co2", 12, 15) + 300


@pytest.mark.parametrize("start", [JAN_1, JUN_1])
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_a_clean_week_stays_realistic(start: float, seed: int) -> None:
    for kind in ("all", "co2"):
        rows = run(sensor(kind=kind, seed=seed), times(start))
        for q in KIND_QUANTITIES[kind]:
            lo, hi = REALISTIC[q]
            values = series(rows, q)
            assert all(lo <= v <= hi for v in values), q
            step = RESOLUTION[q]
            assert all(abs(v / step - round(v / step)) < 1e-6 for v in values)
            assert len(set(values)) > 20, f"{q} barely moves"
            assert longest_run(values) < 12 or q == "humidity", f"{q} looks stuck"
        if kind == "all":
            for r in rows:
                assert r["pm1"] <= r["pm2_5"] <= r["pm10"]


def test_pressure_follows_altitude() -> None:
    low = mean(series(run(sensor(seed=1), times(n=300)), "pressure"))
    high = series(run(sensor(seed=1, altitude=1000.0), times(n=300)), "pressure")
    assert 10_000 < low - mean(high) < 13_000


def test_utc_offset_moves_the_daily_cycle() -> None:
    at = times(n=6 * 24 * 10)
    utc = run(sensor(seed=4), at)
    shifted = run(sensor(seed=4, utc_offset=12.0), at)
    afternoon = [k for k, t in enumerate(at) if 13 <= hour(t) < 16]
    assert mean(utc[k]["temperature"] for k in afternoon) > mean(
        shifted[k]["temperature"] for k in afternoon
    )


# --- faults ------------------------------------------------------------------------------------


def clean_and_faulty(
    fault: str, *, n: int = 2000, kind: str = "all", **options: Any
) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """The same sensor with and without faults: faults come from their own seeded stream, so
    the two differ exactly where faults were injected."""
    at = times(n=n, step=60.0)
    clean = run(sensor(kind=kind, seed=11), at)
    faulty = run(sensor(kind=kind, seed=11, faults=[fault], **options), at)
    return clean, faulty


def differing(clean: list[dict[str, float]], faulty: list[dict[str, float]]) -> list[int]:
    return [k for k, (a, b) in enumerate(zip(clean, faulty, strict=True)) if a != b]


def runs(indices: list[int]) -> list[list[int]]:
    out: list[list[int]] = []
    for k in indices:
        if out and out[-1][-1] == k - 1:
            out[-1].append(k)
        else:
            out.append([k])
    return out


def test_faults_are_off_by_default() -> None:
    clean, faulty = clean_and_faulty("spike", fault_every=10_000_000)
    assert differing(clean, faulty) == []


def test_range_fault_is_flagged_by_the_range_module() -> None:
    s = sensor(kind="all", faults=["range"], fault_every=20)
    ranges = RangeModule(module_id="ranges", options={})
    flagged = 0
    for k, t in enumerate(times(n=400, step=10.0)):
        readings = [
            Reading("sim", m.quantity, QUANTITY_UNITS[m.quantity], m.value, t, True)
            for m in s.read(t)
        ]
        flagged += sum("range" in flags for _, flags in ranges.judge(readings))
        if k == 199:
            assert flagged >= 1  # expected ~10 by now
    assert 8 <= flagged <= 40  # one impossible value per event, ~20 events expected


def test_dropout_raises_sensor_error_then_recovers() -> None:
    s = sensor(faults=["dropout"], fault_every=10)
    outcome = []
    for t in times(n=300, step=10.0):
        try:
            outcome.append(len(s.read(t)))
        except SensorError as exc:
            assert str(exc) == "simulated dropout"
            outcome.append(0)
    assert 10 <= outcome.count(0) <= 200
    gaps = [len(g) for g in runs([k for k, n in enumerate(outcome) if n == 0])]
    assert max(gaps) <= 18  # short gaps (1-6 reads per event), then readings again
    assert outcome.count(3) + outcome.count(0) == 300


def test_stuck_repeats_one_value_for_many_reads() -> None:
    clean, faulty = clean_and_faulty("stuck", kind="climate", fault_every=100)
    events = runs(differing(clean, faulty))
    assert len(events) >= 5
    for q in ("temperature", "pressure"):
        assert longest_run(series(clean, q)) < 6
    assert max(longest_run(series(faulty, q)) for q in ("temperature", "pressure")) >= 12


def test_spike_is_one_big_jump() -> None:
    clean, faulty = clean_and_faulty("spike", fault_every=40)
    changed = differing(clean, faulty)
    assert 20 <= len(changed) <= 100  # one sample per event, ~50 events expected
    for k in changed:
        (q,) = [q for q in clean[k] if clean[k][q] != faulty[k][q]]  # one quantity
        jump = abs(faulty[k][q] - clean[k][q])
        typical = mean(abs(b - a) for a, b in pairwise(series(clean, q)))
        assert jump > 3 * typical, (q, jump, typical)
        assert faulty[k - 1] == clean[k - 1] or k - 1 in changed  # no run-up: a jump


def test_drift_is_a_slow_ramp_that_returns() -> None:
    clean, faulty = clean_and_faulty("drift", kind="climate", n=3000, fault_every=300)
    seen = 0
    for q in clean[0]:
        changed = [k for k in range(len(clean)) if clean[k][q] != faulty[k][q]]
        for e in runs(changed):
            if len(e) < 50:  # a drift's ends are smaller than the resolution at times
                continue
            seen += 1
            offset = [faulty[k][q] - clean[k][q] for k in e]
            peak = max(offset, key=abs)
            assert abs(offset[0]) < abs(peak) / 5 and abs(offset[-1]) < abs(peak) / 5
            assert all(abs(b - a) < abs(peak) / 10 for a, b in pairwise(offset))
    assert seen >= 3


def test_implausible_puts_pm2_5_above_pm10() -> None:
    clean, faulty = clean_and_faulty("implausible", kind="pm", fault_every=30)
    assert all(r["pm2_5"] <= r["pm10"] for r in clean)
    bad = [r for r in faulty if r["pm2_5"] > r["pm10"]]
    assert len(bad) >= 20


def test_fault_after_keeps_the_start_clean() -> None:
    clean, faulty = clean_and_faulty("spike", fault_every=5, fault_after=500)
    changed = differing(clean, faulty)
    assert changed and min(changed) >= 500


def test_faults_are_repeatable() -> None:
    at = times(n=1000, step=10.0)
    options: dict[str, Any] = {"kind": "all", "seed": 5, "faults": list(FAULTS), "fault_every": 15}
    assert run(sensor(**options), at) == run(sensor(**options), at)


def test_faults_never_confess() -> None:
    s = sensor(kind="all", faults=list(FAULTS), fault_every=3)
    for t in times(n=300, step=10.0):
        with contextlib.suppress(SensorError):
            assert all(m.flags == () for m in s.read(t))


# --- configuration -----------------------------------------------------------------------------


def test_unknown_quantity_is_refused_by_the_field_check() -> None:
    check = SimulatedSensor.CONFIG["quantities"].check
    assert check is not None
    assert check(("temperature", "co2")) is None
    message = check(("temprature",))
    assert message is not None and "temprature" in message and "'temperature'" in message
    with pytest.raises(ConfigError, match="temprature"):
        sensor(quantities=["temprature"])


def test_unknown_fault_is_refused() -> None:
    check = SimulatedSensor.CONFIG["faults"].check
    assert check is not None
    assert check(list(FAULTS)) is None
    assert "did you mean 'spike'" in (check(["spik"]) or "")


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"kind": "climate", "quantities": ["co2"]}, "has no 'co2'"),
        ({"kind": "climate", "faults": ["implausible"]}, "implausible"),
        ({"kind": "pm", "quantities": ["pm1", "pm10"], "faults": ["implausible"]}, "pm2_5"),
        ({"kind": "wind"}, "kind"),
        ({"fault_every": 0}, "fault_every"),
        ({"seed": "one"}, "seed"),
    ],
)
def test_inconsistent_options_are_refused(options: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        sensor(**options)
