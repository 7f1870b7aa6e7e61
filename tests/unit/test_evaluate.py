"""The evaluation harness (models/evaluate.py): injection, event matching, baselines, and a
reproducible run on a small slice of the real data."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np  # the dev extra installs numpy and river for the evaluation and its tests
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "models"))

import baselines
import datasets
import evaluate
import faults

N, CAL = 3000, 1200


def _series(seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    i = np.arange(N)
    temp = np.round(15 + 8 * np.sin(2 * np.pi * i / 24) + rng.normal(0, 0.3, N), 1)
    return {"t": temp, "dew": np.round(temp - 4 - rng.uniform(0, 2, N), 1)}


def _check_layout(events: list[faults.Event], kind: str) -> None:
    a, b = faults.LENGTHS[kind]
    assert events, kind
    prev_end = CAL
    for e in events:
        assert e.kind == kind
        assert a <= e.end - e.start <= b
        assert e.start - prev_end >= faults.GUARD  # after calibration, guard between events
        prev_end = e.end
    assert prev_end + faults.GUARD <= N


@pytest.mark.parametrize("kind", [k for k in faults.FAULTS if k != "implausible"])
def test_injection_places_each_fault_where_it_says(kind: str) -> None:
    clean = _series()
    x0 = clean["t"]
    sigma = faults.diff_sigma(x0, CAL)
    out, events = faults.inject(kind, clean, "t", CAL, np.random.default_rng(5))
    x = out["t"]
    _check_layout(events, kind)
    assert np.array_equal(out["dew"], clean["dew"])  # other channels untouched
    assert np.array_equal(x0, clean["t"])  # input not modified
    changed = np.zeros(N, bool)
    for e in events:
        s, t = e.start, e.end
        changed[s:t] = True
        if kind == "spike":
            assert 3 * sigma <= abs(x[s] - x0[s]) <= 10 * sigma
            assert x[s] - x0[s] == pytest.approx(e.size)
        elif kind == "stuck":
            assert np.all(x[s:t] == x0[s - 1])
        elif kind == "drift":
            off = x[s:t] - x0[s:t]
            assert 5 * sigma <= np.max(np.abs(off)) <= 15 * sigma
            assert np.all(np.sign(off) == np.sign(e.size))
            k = int(np.argmax(np.abs(off)))
            assert abs(k - (t - s) / 2) <= 1  # triangular: peak in the middle,
            assert abs(off[0]) < abs(off[k]) / 10 and abs(off[-1]) < abs(off[k]) / 10
            assert np.all(np.diff(np.abs(off[: k + 1])) > 0)  # rising, then falling
        elif kind == "dropout":
            assert np.all(np.isnan(x[s:t]))
        elif kind == "replay":
            src = int(e.size)
            assert src + (t - s) <= s
            assert np.array_equal(x[s:t], x0[src : src + t - s])
    same = ~changed
    assert np.array_equal(x[same], x0[same])  # nothing outside the events changed
    assert not changed[:CAL].any()


def test_injection_implausible_pairs() -> None:
    clean = _series()
    out, events = faults.inject("implausible", clean, ("dew", "t"), CAL, np.random.default_rng(2))
    _check_layout(events, "implausible")
    mask = np.zeros(N, bool)
    for e in events:
        mask[e.start : e.end] = True
        assert np.all(out["dew"][e.start : e.end] > out["t"][e.start : e.end])
    assert np.array_equal(out["t"], clean["t"])
    assert np.array_equal(out["dew"][~mask], clean["dew"][~mask])
    assert np.all(out["dew"][~mask] < out["t"][~mask])

    pm10 = np.full(N, 30.0)
    out, events = faults.inject(
        "implausible", {"pm/pm2_5": pm10 * 0.5, "pm/pm10": pm10}, ("pm/pm2_5", "pm/pm10"), CAL,
        np.random.default_rng(3),
    )  # fmt: skip
    for e in events:
        assert np.all(out["pm/pm2_5"][e.start : e.end] > 30.0)


def test_injection_is_reproducible() -> None:
    a = faults.inject("drift", _series(), "t", CAL, np.random.default_rng(9))
    b = faults.inject("drift", _series(), "t", CAL, np.random.default_rng(9))
    assert a[1] == b[1] and np.array_equal(a[0]["t"], b[0]["t"])


def test_event_matching_by_hand() -> None:
    alarm = np.zeros(60, bool)
    events = [(10, 13), (20, 21), (40, 45)]
    alarm[[2, 3]] = True  # before lo: not counted at all
    alarm[11] = alarm[12] = alarm[13] = True  # one alarm event inside the first event
    alarm[25] = True  # 4 samples after event 2 ends (end 21, last sample 20): within 5 after
    alarm[30] = True  # false alarm event
    alarm[50] = True  # 5 samples after event 3's end 45: index 50 = end + 5 -> outside
    c = evaluate.match(alarm, events, lo=5)
    assert (c.events, c.caught, c.alarms, c.true_alarms) == (3, 2, 4, 2)
    p, r, f = c.prf()
    assert p == pytest.approx(0.5) and r == pytest.approx(2 / 3)
    assert f == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    assert evaluate.runs(alarm, 5) == [(11, 14), (25, 26), (30, 31), (50, 51)]
    # an alarm on the first sample after the tolerance is not a catch
    late = np.zeros(60, bool)
    late[21 + 5] = True
    assert evaluate.match(late, [(20, 21)], lo=0).caught == 0
    assert evaluate.match(late, [(20, 22)], lo=0).caught == 1


def test_calibration_uses_clean_budget() -> None:
    s = np.arange(10_000, dtype=float)  # 0.5 per 1,000 of 10,000 -> 5 alarms allowed
    t = evaluate.calibrate(s, len(s))
    assert int(np.sum(s > t)) == 5
    assert evaluate.calibrate(np.full(100, np.nan), 100) == np.inf


def test_baselines_catch_an_obvious_spike() -> None:
    x = _series(4)["t"]
    pos = 2000
    x = x.copy()
    spiked = x.copy()
    spiked[pos] += 40 * faults.diff_sigma(x, CAL)
    warm = 500
    hst = baselines.HST(seed=1)
    for name, fn in (("zlevel", baselines.zlevel), ("zdiff", baselines.zdiff), ("hst", hst)):
        thr = evaluate.calibrate(fn(x, CAL)[warm:CAL], CAL - warm)
        alarm = evaluate._alarm(fn(spiked, CAL), thr)
        assert alarm[pos : pos + 1 + evaluate.TOLERANCE].any(), name
        assert evaluate.match(alarm, [(pos, pos + 1)], CAL).caught == 1, name


def test_baselines_skip_missing_readings() -> None:
    x = _series()["t"].copy()
    x[2000:2010] = np.nan
    for fn in (baselines.zlevel, baselines.zdiff, baselines.HST(seed=0)):
        s = fn(x, CAL)
        assert np.all(np.isnan(s[2000:2010]))
        assert np.isfinite(s[2010:]).all()


def test_config_with_only_module_tables(tmp_path: Path) -> None:
    cfg = tmp_path / "chain.toml"
    cfg.write_text('[[module]]\nid = "r"\nkind = "ranges"\nranges = { co2 = [0, 5000] }\n')
    [m] = evaluate.module_configs(cfg)
    assert (m.id, m.kind, dict(m.options)) == ("r", "ranges", {"ranges": {"co2": [0, 5000]}})
    registered = {m.kind for m in evaluate.module_configs(None)}
    assert "ranges" in registered


def test_datasets_load() -> None:
    tmy, co2, pm = datasets.load_groups(0)
    assert tmy.n == 8760 and [c.quantity for c in tmy.channels] == [
        "temperature", "dew_point", "humidity", "pressure"
    ]  # fmt: skip
    assert np.all(np.diff(tmy.t) == 3600)
    assert 90_000 < np.nanmedian(tmy.channel("tmy/pressure").x) < 105_000
    assert not np.isnan(co2.channels[0].x).any()
    assert all(not c.real for c in pm.channels)
    nab = datasets.load_nab()
    assert sum(len(s.windows) for s in nab) == 19
    assert all(s.cal_end <= min(a for a, _ in s.windows) for s in nab)


def _strip(res: dict) -> dict:
    return {k: v for k, v in res.items() if k not in ("seconds", "chain_us_per_reading")}


def test_whole_evaluation_on_a_slice_is_reproducible(tmp_path: Path) -> None:
    cfg = tmp_path / "chain.toml"
    cfg.write_text('[[module]]\nid = "ranges"\nkind = "ranges"\n')
    factory = evaluate.chain_factory(evaluate.module_configs(cfg))
    kw = {"seed": 7, "limit": 1500, "nab": True, "nab_limit": 1500}
    a = evaluate.evaluate(factory, **kw)
    b = evaluate.evaluate(factory, **kw)
    assert _strip(a) == _strip(b)
    assert set(a["faults"]) == set(faults.FAULTS)
    for per in a["faults"].values():
        assert set(per) == set(evaluate.DETECTORS)
        assert per["chain"]["events"] > 0
    assert a["nab"]["chain"]["events"] > 0
    text = evaluate.table(a, ["ranges (ranges)"])
    assert "spike" in text and "NAB windows" in text
    c = evaluate.evaluate(factory, **{**kw, "seed": 8})
    assert _strip(c)["faults"] != _strip(a)["faults"]  # the seed matters
