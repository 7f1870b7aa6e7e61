"""Fault injection at known positions, one fault type at a time (models/data/README.md).

Every fault is placed only after the calibration part, with at least `GUARD` clean samples
between two events, and its size is drawn from the protocol's ranges:

- spike: one sample, +/- 3-10 sigma, sigma = std of the first differences of the calibration part;
- stuck: the last good value held for 12-48 samples;
- drift: triangular offset over 96-240 samples, peak +/- 5-15 sigma;
- dropout: 1-24 consecutive samples missing (no reading at all; NaN in the arrays);
- replay: a segment of 24-72 samples replaced by a copy of an earlier segment of the same series;
- implausible: over 1-12 samples the `low` channel of a pair is set above the `high` one:
  dew point = temperature + 0.5-5 Cel, or PM2.5 = PM10 x 1.1-2.0.

An event is the half-open sample range [start, end) that the fault changed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FAULTS = ("spike", "stuck", "drift", "dropout", "replay", "implausible")
GUARD = 48  # clean samples at least between two events (and before the first)
EXTRA_GAP = (0, 200)  # plus a random gap drawn from this range

LENGTHS = {
    "spike": (1, 1),
    "stuck": (12, 48),
    "drift": (96, 240),
    "dropout": (1, 24),
    "replay": (24, 72),
    "implausible": (1, 12),
}
SPIKE_SIGMA = (3.0, 10.0)
DRIFT_SIGMA = (5.0, 15.0)
DEW_OFFSET = (0.5, 5.0)
PM_RATIO = (1.1, 2.0)


@dataclass(frozen=True)
class Event:
    kind: str
    channel: str  # the channel changed (for implausible: the `low` channel of the pair)
    start: int
    end: int  # exclusive
    size: float = 0.0  # spike/drift: signed magnitude; replay: source start; implausible: offset


def diff_sigma(x: np.ndarray, cal_end: int) -> float:
    d = np.diff(x[:cal_end])
    d = d[np.isfinite(d)]
    s = float(np.std(d)) if len(d) else 0.0
    return s if s > 0 else 1.0


def place(
    kind: str, lo: int, hi: int, rng: np.random.Generator, guard: int = GUARD
) -> list[tuple[int, int]]:
    """Non-overlapping [start, end) ranges in [lo + guard, hi - guard) for `kind`."""
    a, b = LENGTHS[kind]
    out: list[tuple[int, int]] = []
    cur = lo + guard + int(rng.integers(*EXTRA_GAP))
    while True:
        length = int(rng.integers(a, b + 1))
        if cur + length + guard > hi:
            return out
        out.append((cur, cur + length))
        cur += length + guard + int(rng.integers(*EXTRA_GAP))


def inject(
    kind: str,
    series: dict[str, np.ndarray],
    target: str | tuple[str, str],
    cal_end: int,
    rng: np.random.Generator,
) -> tuple[dict[str, np.ndarray], list[Event]]:
    """Copies of `series` (channel name -> values) with faults of `kind` in `target` (a channel
    name, or a (low, high) pair for `implausible`), and the events placed."""
    out = {k: v.copy() for k, v in series.items()}
    if kind == "implausible":
        if not isinstance(target, tuple):
            raise ValueError("implausible needs a (low, high) channel pair")
        low, high = target
        n = len(out[low])
        events = []
        for s, e in place(kind, cal_end, n, rng):
            if "pm" in low:
                r = float(rng.uniform(*PM_RATIO))
                out[low][s:e] = np.round(out[high][s:e] * r, 1)
                events.append(Event(kind, low, s, e, r))
            else:
                off = float(rng.uniform(*DEW_OFFSET))
                out[low][s:e] = np.round(out[high][s:e] + off, 1)
                events.append(Event(kind, low, s, e, off))
        return out, events
    if not isinstance(target, str):
        raise ValueError(f"{kind} needs one channel name")
    x = out[target]
    n = len(x)
    sigma = diff_sigma(series[target], cal_end)
    events = []
    for s, e in place(kind, cal_end, n, rng):
        size = 0.0
        if kind == "spike":
            size = float(rng.uniform(*SPIKE_SIGMA)) * sigma * float(rng.choice((-1.0, 1.0)))
            x[s] += size
        elif kind == "stuck":
            x[s:e] = x[s - 1]
        elif kind == "drift":
            size = float(rng.uniform(*DRIFT_SIGMA)) * sigma * float(rng.choice((-1.0, 1.0)))
            d = e - s
            i = np.arange(d)
            x[s:e] += size * (1.0 - np.abs(2.0 * (i + 1) / (d + 1) - 1.0))
        elif kind == "dropout":
            x[s:e] = np.nan
        elif kind == "replay":
            length = e - s
            src = int(rng.integers(0, s - length))  # any earlier, non-overlapping segment
            x[s:e] = series[target][src : src + length]
            size = float(src)
        else:
            raise ValueError(f"unknown fault {kind!r}")
        events.append(Event(kind, target, s, e, size))
    return out, events
