"""Rule module:
`stuck`: a value repeated for longer than the series' own repeat rate makes likely. A 1 hPa
barometer or a 1 ppm CO2 sensor repeats often when nothing changes, so its limit grows with
how often it has repeated before; a fine-resolution sensor hits the per-quantity limit.

State is kept per series (`sensor/quantity`) and a reading is judged only from what came
before it: the chain calls `judge` once per sensor read, in time order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from gateway.modules.base import NO_OPINION, DetectionModule, Verdict
from gateway.modules.series import (
    DEFAULT_RUN_LIMIT,
    FALLBACK_RESOLUTION,
    FALLBACK_RUN_LIMIT,
    check_number_table,
    module_options,
    resolutions,
)
from gateway.reading import Reading
from gateway.schema import Field

# --------------------------------------------------------------------------- stuck


class _StuckState:
    __slots__ = ("rep", "run", "steps", "value")

    def __init__(self, value: float) -> None:
        self.value = value
        self.run = 1
        self.rep = 0.5  # running share of steps that repeated the value
        self.steps = 0


class StuckModule(DetectionModule):
    """One value held for longer than this series makes plausible.

    Two values are the same when they differ by less than half the quantity's resolution.
    The run limit is the larger of the per-quantity floor and the run length a series that
    repeats with probability p reaches by chance with probability `alpha` (log alpha / log p),
    capped at `max_run`: a 1 hPa barometer on a calm day repeats for hours, a 0.01 Cel sensor
    does not.
    """

    name = "stuck"
    version = "1.0.0"
    SAMPLE_CONFIG: ClassVar[str] = """\
[[module]]
id = "stuck"
kind = "stuck"
resolutions = { pressure = 100.0, co2 = 1.0 }
run_limits = { temperature = 12, pressure = 12 }
max_run = 24
"""
    CONFIG: ClassVar[Mapping[str, Field]] = {
        "resolutions": Field(
            "table",
            "per-quantity output resolution: values closer than half of it are the same",
            default={},
            check=check_number_table,
        ),
        "run_limits": Field(
            "table",
            "per-quantity shortest run (readings) that is stuck, before the repeat-rate rule",
            default={},
            check=check_number_table,
        ),
        "alpha": Field(
            "float",
            "chance of a run this long in healthy data that is accepted as a false alarm",
            default=1e-4,
            min=1e-12,
            max=0.5,
        ),
        "max_run": Field(
            "int", "longest run limit the repeat-rate rule may set (readings)", default=24, min=2
        ),
    }

    def __init__(self, *, module_id: str, options: Mapping[str, Any]) -> None:
        super().__init__(module_id=module_id, options=options)
        o = module_options(type(self), options)
        self.resolution = resolutions(o["resolutions"])
        self.run_limit = dict(DEFAULT_RUN_LIMIT)
        self.run_limit.update({q: int(x) for q, x in dict(o["run_limits"]).items()})
        self.log_alpha = math.log(float(o["alpha"]))
        self.max_run = int(o["max_run"])
        self.state: dict[str, _StuckState] = {}

    def limit(self, quantity: str, repeat_rate: float) -> int:
        floor = self.run_limit.get(quantity, FALLBACK_RUN_LIMIT)
        p = min(max(repeat_rate, 1e-6), 0.999)
        by_rate = min(self.max_run, math.ceil(self.log_alpha / math.log(p)) + 1)
        return max(floor, by_rate)

    def judge(self, readings: Sequence[Reading]) -> Sequence[Verdict]:
        return [self._one(r) for r in readings]

    def _one(self, r: Reading) -> Verdict:
        v = r.value
        if v is None:
            return NO_OPINION
        key = r.name
        st = self.state.get(key)
        if st is None:
            self.state[key] = _StuckState(v)
            return NO_OPINION
        half = 0.5 * self.resolution.get(r.quantity, FALLBACK_RESOLUTION)
        same = abs(v - st.value) < half
        limit = self.limit(r.quantity, st.rep)
        if st.run < limit:  # steps inside an alarm would teach the series to repeat
            st.steps += 1
            a = max(1.0 / st.steps, 1.0 / 2048)
            st.rep += a * ((1.0 if same else 0.0) - st.rep)
        if not same:
            st.value = v
            st.run = 1
            return NO_OPINION
        st.run += 1
        if st.run < limit:
            return NO_OPINION
        return (min(1.0, 0.5 + 0.5 * (st.run - limit) / limit), ("stuck",))
