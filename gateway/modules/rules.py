"""Streaming rule modules: cheap, explainable checks that judge each series as it flows.

This file lists them; each family lives in its own file (`spikes.py`, `stuck.py`, `replay.py`,
`gaps.py`, `plausibility.py`, `drift.py`) with what they share in `series.py`.

Every rule keeps a little state per series (a reading's name, `sensor/quantity`) and judges a
reading from what came before it, never from what comes after: the chain calls `judge` once per
sensor read, in time order. The rules are pure Python on small windows so the whole chain stays
within a few microseconds per reading on a Raspberry Pi.

- `spikes`: a first difference far outside the rolling robust (median/MAD) spread of recent
  differences, or an up-and-back-down pair of them. Differences, not levels, because a diurnal
  cycle moves the level a lot but each step only a little.
- `stuck`: a value repeated for longer than the series' own repeat rate makes likely. A 1 hPa
  barometer or a 1 ppm CO2 sensor repeats often when nothing changes, so its limit grows with
  how often it has repeated before; a fine-resolution sensor hits the per-quantity limit.
- `replay`: the last k quantised first differences were seen before, as a block, in this series:
  a copied segment. Flat or nearly flat windows never count (a variation gate), since any two
  calm nights look alike.
- `dropout`: the first good reading after failed reads or a gap of several usual intervals, so a
  consumer knows the series has a hole before it.
- `warmup`: the first readings after a series starts, recovers from failures or resumes after a
  long gap; warming sensors (fans, NDIR lamps, heaters) read off for a while.
- `drift`: a slow departure of a series from its own expected level (a slow baseline plus a
  daily shape): the residual, smoothed, measured against its usual size while healthy. Time
  constants are durations, so they mean the same at any sampling rate.
- `plausibility`: combinations no healthy set of sensors produces: PM2.5 above PM10, dew point
  above temperature, relative humidity outside 0–100, station pressure far from what the
  configured altitude implies, two sensors of one quantity disagreeing.
"""

from __future__ import annotations

from gateway.modules import gaps, plausibility, replay, spikes, stuck
from gateway.modules.drift import DriftModule
from gateway.modules.gaps import DropoutModule, WarmupModule
from gateway.modules.plausibility import PlausibilityModule, dew_point, station_pressure
from gateway.modules.replay import ReplayModule
from gateway.modules.spikes import SpikeModule
from gateway.modules.stuck import StuckModule

__all__ = [
    "DriftModule",
    "DropoutModule",
    "PlausibilityModule",
    "ReplayModule",
    "SpikeModule",
    "StuckModule",
    "WarmupModule",
    "dew_point",
    "station_pressure",
]


#: the rules' samples, one after another: each module's `sample.toml` fragment, from its manifest
SAMPLE_CONFIG = "\n".join(
    m.sample_text()
    for m in (
        spikes.MANIFEST,
        stuck.MANIFEST,
        replay.MANIFEST,
        gaps.DROPOUT,
        gaps.WARMUP,
        plausibility.MANIFEST,
    )
)
