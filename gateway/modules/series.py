"""What the rule modules share: each chip's resolution, run limits and small statistics.

The rules themselves live one family per file (`spikes`, `stuck`, `replay`, `gaps`,
`plausibility`); `gateway/modules/rules.py` lists them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.modules.base import DetectionModule

# Resolution of the supported chips' output, in the SenML units we emit (datasheets): what
# "the same value" means for a series. TMY-style hourly data is coarser; configure it.
DEFAULT_RESOLUTION: dict[str, float] = {
    "temperature": 0.01,  # BME280 0.01 Cel, SHT4x/SCD4x finer than that
    "humidity": 0.01,  # SHT4x 0.01 %RH, BME280 ~0.008 %RH
    "pressure": 0.2,  # BME280 0.18 Pa; a BMP180-class part reports whole Pa
    "dew_point": 0.01,
    "co2": 1.0,  # SCD4x whole ppm
    "pm1": 1.0,  # PMS5003 whole ug/m3
    "pm2_5": 0.1,  # SDS011 0.1 ug/m3
    "pm10": 0.1,
}
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
    """The chips' resolutions per quantity, with a module's configured ones on top."""
    table = dict(DEFAULT_RESOLUTION)
    table.update({q: float(x) for q, x in dict(overrides).items()})
    return table
