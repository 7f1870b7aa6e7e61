"""The real series of models/data, loaded as channels the module chain can judge.

A *group* is a set of channels sampled at the same timestamps (one index space); the evaluation
feeds each group to the chain one timestamp at a time, as the gateway does with one sensor read.

- `tmy`: NREL TMY3 Greensboro, hourly: dry-bulb temperature, dew point, relative humidity and
  station pressure (mbar -> Pa). TMY months come from different years, so the timestamps are
  rebuilt as one continuous hourly year (2021, not a leap year) from the file's month/day/hour.
- `co2`: Mauna Loa weekly CO2 (ppm). Its 59 missing weeks are filled by linear interpolation
  (they are not faults we inject, and the protocol wants clean series); its 1958-2001 dates are
  shifted by a whole number of weeks to start in 2014, so Unix times stay positive.
- `pm`: there is no particulate data in models/data, so a PM2.5/PM10 pair is *synthesised*
  (log-normal AR(1) with a daily cycle, PM2.5/PM10 ratio 0.35-0.85); it is used only for the
  "PM2.5 above PM10" implausible-combination fault, never for the single-channel faults.
- NAB realKnownCause: every file with its labelled windows as index ranges; the first 15 % (NAB's
  probationary period, no window starts in it) is the clean calibration part.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: in the repository, so a checkout alone runs the evaluation and the tests (licences: its README)
DATA = Path(__file__).resolve().parent / "data"

#: quantity names and SenML units as the gateway's drivers emit them
UNITS = {
    "temperature": "Cel",
    "dew_point": "Cel",
    "humidity": "%RH",
    "pressure": "Pa",
    "co2": "ppm",
    "pm2_5": "ug/m3",
    "pm10": "ug/m3",
}


@dataclass
class Channel:
    name: str  # e.g. "tmy/temperature"
    sensor: str  # sensor id of the Reading
    quantity: str
    unit: str
    x: np.ndarray  # float64 values, NaN = no reading at that timestamp
    real: bool = True  # False: synthesised (used only for the cross-sensor fault)


@dataclass
class Group:
    name: str
    t: np.ndarray  # Unix seconds, strictly increasing
    channels: list[Channel]
    cal_end: int  # samples [0, cal_end) are the clean calibration part
    #: pairs (low, high) of channel names where value(low) > value(high) is implausible
    pairs: list[tuple[str, str]] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.t)

    def channel(self, name: str) -> Channel:
        for c in self.channels:
            if c.name == name:
                return c
        raise KeyError(name)


@dataclass
class NabSeries:
    name: str
    t: np.ndarray
    x: np.ndarray
    quantity: str
    unit: str
    windows: list[tuple[int, int]]  # [start, end) sample indices
    cal_end: int


def _ch(group: str, sensor: str, quantity: str, x: np.ndarray, real: bool = True) -> Channel:
    return Channel(f"{group}/{quantity}", sensor, quantity, UNITS[quantity], x, real)


def load_tmy(path: Path | None = None, cal_fraction: float = 0.4) -> Group:
    path = path or DATA / "weather" / "723170TYA.CSV"
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    head = rows[1]
    col = {name: head.index(name) for name in head}
    body = rows[2:]
    start = dt.datetime(2021, 1, 1, tzinfo=dt.UTC)
    t = []
    for r in body:
        month, day, _ = (int(p) for p in r[col["Date (MM/DD/YYYY)"]].split("/"))
        hour = int(r[col["Time (HH:MM)"]].split(":")[0])  # 1..24, the hour *ending* then
        moment = dt.datetime(2021, month, day, tzinfo=dt.UTC) + dt.timedelta(hours=hour)
        t.append((moment - start).total_seconds() + start.timestamp())
    tt = np.array(t, dtype=float)
    if not np.all(np.diff(tt) > 0):
        raise ValueError(f"{path}: timestamps not increasing")

    def num(name: str, scale: float = 1.0) -> np.ndarray:
        return np.array([float(r[col[name]]) * scale for r in body], dtype=float)

    chans = [
        _ch("tmy", "tmy-temperature", "temperature", num("Dry-bulb (C)")),
        _ch("tmy", "tmy-dewpoint", "dew_point", num("Dew-point (C)")),
        _ch("tmy", "tmy-humidity", "humidity", num("RHum (%)")),
        _ch("tmy", "tmy-pressure", "pressure", num("Pressure (mbar)", 100.0)),
    ]
    return Group(
        "tmy",
        tt,
        chans,
        int(len(tt) * cal_fraction),
        pairs=[("tmy/dew_point", "tmy/temperature")],
    )


def load_co2(path: Path | None = None, cal_fraction: float = 0.4) -> Group:
    path = path or DATA / "weather" / "co2.csv"
    dates, vals = [], []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            d = r["date"]
            dates.append(dt.datetime(int(d[:4]), int(d[4:6]), int(d[6:]), tzinfo=dt.UTC))
            vals.append(float(r["co2"]) if r["co2"].strip() else np.nan)
    shift = dt.timedelta(weeks=2912)  # 1958 -> 2014, whole weeks
    t = np.array([(d + shift).timestamp() for d in dates], dtype=float)
    x = np.array(vals, dtype=float)
    bad = np.isnan(x)
    if bad.any():
        idx = np.arange(len(x))
        x[bad] = np.round(np.interp(idx[bad], idx[~bad], x[~bad]), 1)
    return Group("co2", t, [_ch("co2", "mlo-co2", "co2", x)], int(len(t) * cal_fraction))


def synth_pm(t: np.ndarray, seed: int, cal_fraction: float = 0.4) -> Group:
    """A plausible hourly PM2.5/PM10 pair (synthetic; see the module docstring)."""
    rng = np.random.default_rng([seed, 2510])
    n = len(t)
    hours = (t / 3600.0) % 24
    log_pm10 = np.empty(n)
    a = 0.97
    level = np.log(25.0)
    z = 0.0
    for i in range(n):
        z = a * z + rng.normal(0, 0.12)
        log_pm10[i] = level + z + 0.25 * np.sin(2 * np.pi * (hours[i] - 8) / 24)
    pm10 = np.round(np.exp(log_pm10), 1)
    r = 0.0
    ratio = np.empty(n)
    for i in range(n):
        r = 0.98 * r + rng.normal(0, 0.03)
        ratio[i] = float(np.clip(0.6 + r, 0.35, 0.85))
    pm25 = np.round(pm10 * ratio, 1)
    chans = [
        _ch("pm", "synth-pm", "pm2_5", pm25, real=False),
        _ch("pm", "synth-pm", "pm10", pm10, real=False),
    ]
    return Group("pm", t.copy(), chans, int(n * cal_fraction), pairs=[("pm/pm2_5", "pm/pm10")])


_NAB_QUANTITY = {
    "ambient_temperature_system_failure": ("temperature", "Cel"),
    "machine_temperature_system_failure": ("temperature", "Cel"),
    "cpu_utilization_asg_misconfiguration": ("cpu_utilization", "%"),
    "ec2_request_latency_system_failure": ("latency", "ms"),
    "nyc_taxi": ("count", "1"),
    "rogue_agent_key_hold": ("value", "1"),
    "rogue_agent_key_updown": ("value", "1"),
}


def _ts(text: str) -> float:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp()


def load_nab(root: Path | None = None, probation: float = 0.15) -> list[NabSeries]:
    """NAB realKnownCause; temperature files are in Fahrenheit and converted to Celsius."""
    root = root or DATA / "nab"
    windows = json.loads((root / "labels" / "combined_windows.json").read_text())
    out = []
    for path in sorted((root / "realKnownCause").glob("*.csv")):
        ts, xs = [], []
        with open(path, newline="") as f:
            for r in csv.DictReader(f):
                ts.append(_ts(r["timestamp"]))
                xs.append(float(r["value"]))
        t = np.array(ts)
        x = np.array(xs)
        quantity, unit = _NAB_QUANTITY.get(path.stem, ("value", "1"))
        if quantity == "temperature":
            x = (x - 32.0) * 5.0 / 9.0
        wins = []
        for a, b in windows.get(f"realKnownCause/{path.name}", []):
            lo = int(np.searchsorted(t, _ts(a), "left"))
            hi = int(np.searchsorted(t, _ts(b), "right"))
            wins.append((lo, hi))
        cal_end = min([int(len(t) * probation), *(lo for lo, _ in wins)])
        out.append(NabSeries(path.stem, t, x, quantity, unit, wins, cal_end))
    return out


def truncate(group: Group, limit: int | None) -> Group:
    """The first `limit` samples of a group (for quick runs and tests)."""
    if not limit or limit >= group.n:
        return group
    frac = group.cal_end / group.n
    chans = [
        Channel(c.name, c.sensor, c.quantity, c.unit, c.x[:limit].copy(), c.real)
        for c in group.channels
    ]
    return Group(group.name, group.t[:limit].copy(), chans, int(limit * frac), list(group.pairs))


def load_groups(seed: int, limit: int | None = None) -> list[Group]:
    tmy = load_tmy()
    groups = [tmy, load_co2(), synth_pm(tmy.t, seed)]
    return [truncate(g, limit) for g in groups]
