"""What the rule modules share: resolutions, run limits and small statistics.

The rules themselves live one family per file (`spikes`, `stuck`, `replay`, `gaps`,
`plausibility`); `gateway/modules/rules.py` lists them. The chips' facts (each quantity's
resolution and range) come from the drivers' manifests, through `gateway/modules/chips.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.modules.base import DetectionModule
from gateway.modules.chips import chip_facts

# What "the same value" means for a quantity no driver states a resolution for: a dew point
# (no chip reports one; a driver computing it gets this), and every other quantity (FALLBACK).
# TMY-style hourly data is coarser than any chip; configure it.
UNSTATED_RESOLUTION: dict[str, float] = {"dew_point": 0.01}
FALLBACK_RESOLUTION = 0.01

# Shortest run of one value called stuck, per quantity (samples). Coarse sensors get longer
# limits from their own repeat rate; these are the floors.
DEFAULT_RUN_LIMIT: dict[str, int] = {
    "temperature": 12,
    "humidity": 12,
    "pressure": 12,
    "dew_point": 12,
    "co2": 12,
    "pm1": 30,  # clean air reads 0 or 1 ug/m3 for hours
    "pm2_5": 30,
    "pm10": 30,
}
FALLBACK_RUN_LIMIT = 12

# Two sensors of one quantity may differ by this much before they "disagree".
DEFAULT_TOLERANCE: dict[str, float] = {
    "temperature": 2.0,  # Cel: two chips' accuracy plus placement
    "humidity": 10.0,  # %RH
    "pressure": 300.0,  # Pa: 3 hPa covers chip accuracy and a few metres of height
    "co2": 200.0,  # ppm
}


def check_number_table(value: Any, *, positive: bool = True) -> str | None:
    if not isinstance(value, dict):
        return "expected a table like { temperature = 0.1 }"
    for q, x in value.items():
        if not isinstance(x, int | float) or isinstance(x, bool) or (positive and x <= 0):
            return f"{q}: expected a positive number"
    return None


def module_options(cls: type[DetectionModule], options: Mapping[str, Any]) -> dict[str, Any]:
    """Options with the declared defaults filled in, so a module built without the config
    loader (tests, tools) behaves like a configured one."""
    out = {k: f.default for k, f in cls.CONFIG.items() if not f.required}
    out.update(options)
    return out


def median(sorted_values: list[float]) -> float:
    n = len(sorted_values)
    h = n // 2
    return sorted_values[h] if n % 2 else 0.5 * (sorted_values[h - 1] + sorted_values[h])


def resolutions(overrides: Mapping[str, Any]) -> dict[str, float]:
    """Per quantity, the resolution its chips state (gateway/modules/chips.py), with a module's
    configured ones on top."""
    table = dict(UNSTATED_RESOLUTION)
    table.update(chip_facts().resolution)
    table.update({q: float(x) for q, x in dict(overrides).items()})
    return table
