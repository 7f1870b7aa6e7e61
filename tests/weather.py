"""Real hourly weather for the detection modules' tests (models/data, with its licence), and
how their alarms are scored against injected events (models/data/README.md): an event is
caught when an alarm falls inside it or at most five samples after it."""

from __future__ import annotations

import csv
import itertools
import random
import statistics
from collections.abc import Sequence
from pathlib import Path

from gateway.core.reading import Reading
from gateway.modules.base import DetectionModule

TMY = Path(__file__).resolve().parents[1] / "models/data/weather/723170TYA.CSV"
HOUR = 3600.0
# TMY3 columns by header name, with the factor to our SenML units and the data's resolution
COLUMNS = {
    "temperature": ("Dry-bulb (C)", 1.0, 0.1),
    "dew_point": ("Dew-point (C)", 1.0, 0.1),
    "humidity": ("RHum (%)", 1.0, 1.0),
    "pressure": ("Pressure (mbar)", 100.0, 100.0),  # mbar -> Pa, 1 hPa steps
}
RES = {q: r for q, (_, _, r) in COLUMNS.items()}
ALTITUDE = 273.0  # Greensboro station, from the file's first header line
# TMY months come from different years: at the January/February seam (hour 744) the dew point
# disagrees with temperature and humidity by 6 Cel for a few hours, which is implausible
SEAM = frozenset(range(738, 750))


def _load() -> dict[str, list[float]]:
    with TMY.open(newline="") as f:
        rows = list(csv.reader(f))
    header, data = rows[1], rows[2:]  # line 1 is the station, line 2 the column names
    return {
        q: [float(r[header.index(col)]) * k for r in data] for q, (col, k, _) in COLUMNS.items()
    }


#: quantity -> its hourly values over the year, in our units
SERIES = _load()


def step_sigma(values: Sequence[float]) -> float:
    """The standard deviation of the steps from one value to the next."""
    return statistics.pstdev([b - a for a, b in itertools.pairwise(values)])


def flagged_at(
    mod: DetectionModule, quantity: str, values: Sequence[float | None], flag: str
) -> list[int]:
    """The positions in `values` (one an hour) that `mod` gave `flag`."""
    out = []
    for i, v in enumerate(values):
        ((score, flags),) = mod.judge([Reading("w", quantity, "", v, i * HOUR, True)])
        assert 0.0 <= score <= 1.0
        if flag in flags:
            out.append(i)
    return out


def alarm_events(alarms: Sequence[int]) -> int:
    """Alarm events: runs of consecutive alarmed samples count once."""
    return sum(1 for i, a in enumerate(alarms) if i == 0 or alarms[i - 1] != a - 1)


def share_caught(alarms: Sequence[int], events: Sequence[tuple[int, int]]) -> float:
    """The share of `events` (start, end) with an alarm inside or at most five samples after."""
    hits = sum(any(s <= a < e + 5 for a in alarms) for s, e in events)
    return hits / len(events)


def event_starts(rng: random.Random, n: int, spacing: int = 300) -> list[int]:
    """Event starts after the first 1000 samples (baseline and calibration), well apart."""
    return [1000 + spacing * i + rng.randrange(0, spacing // 3) for i in range(n)]
