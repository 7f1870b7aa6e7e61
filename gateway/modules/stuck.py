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

from gateway.core.fields import Field
from gateway.core.manifest import Manifest
from gateway.core.reading import Reading
from gateway.modules.base import NO_OPINION, DetectionModule, Verdict
from gateway.modules.series import (
    DEFAULT_RUN_LIMIT,
    FALLBACK_RESOLUTION,
    FALLBACK_RUN_LIMIT,
    check_number_table,
    module_options,
    resolutions,
)

# --------------------------------------------------------------------------- stuck


class _StuckState:
    __slots__ = (
        "at_hi",
        "at_lo",
        "hi",
        "lo",
        "longest",
        "rep",
        "rep_bound",
        "run",
        "steps",
        "steps_bound",
        "value",
    )

    def __init__(self, value: float) -> None:
        self.value = value
        self.run = 1
        self.rep = 0.5  # running share of steps that repeated the value
        self.steps = 0
        self.lo = self.hi = value  # the lowest and highest values the series has shown
        self.at_lo = self.at_hi = 0  # readings seen at them
        self.rep_bound = 0.5  # the same share, for steps from a value at one of them
        self.steps_bound = 0
        self.longest = 0  # the longest run at a bound that has ended


class StuckModule(DetectionModule):
    """One value held for longer than this series makes plausible.

    Two values are the same when they differ by less than half the quantity's resolution.
    The run limit is the larger of the per-quantity floor and the run length a series that
    repeats with probability p reaches by chance with probability `alpha` (log alpha / log p),
    capped at `max_run`: a 1 hPa barometer on a calm day repeats for hours, a 0.01 Cel sensor
    does not.

    A value at the lowest or highest the series has shown, where it has often been before
    (`BOUND_VISITS` readings: not a new record of a warming spring), is a sensor at its limit
    (a saturated hygrometer in fog at 100 %RH, a particle counter at 0 in clean air, an idle
    counter): it holds legitimately and far more often, so runs there have their own repeat
    rate, capped at `bound_max_run` instead, and are stuck only once they are also longer than
    any run at a bound that the series has come out of before (idle periods are not geometric:
    a quiet counter rests for hours).
    """

    name = "stuck"
    version = "1.0.0"
    USES_CHIP_FACTS = True
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
        "bound_max_run": Field(
            "int",
            "the same, for a value at the lowest or highest the series has shown",
            default=96,
            min=2,
        ),
    }

    #: readings at an extreme before it counts as the sensor's limit
    BOUND_VISITS = 32

    def __init__(self, *, module_id: str, options: Mapping[str, Any]) -> None:
        super().__init__(module_id=module_id, options=options)
        o = module_options(type(self), options)
        self.resolution = resolutions(o["resolutions"])
        self.run_limit = dict(DEFAULT_RUN_LIMIT)
        self.run_limit.update({q: int(x) for q, x in dict(o["run_limits"]).items()})
        self.log_alpha = math.log(float(o["alpha"]))
        self.max_run = int(o["max_run"])
        self.bound_max_run = int(o["bound_max_run"])
        self.state: dict[str, _StuckState] = {}

    def limit(self, quantity: str, repeat_rate: float, *, bound: bool = False) -> int:
        floor = self.run_limit.get(quantity, FALLBACK_RUN_LIMIT)
        p = min(max(repeat_rate, 1e-6), 0.999)
        cap = self.bound_max_run if bound else self.max_run
        by_rate = min(cap, math.ceil(self.log_alpha / math.log(p)) + 1)
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
        bound = False
        if abs(st.value - st.lo) < half:
            st.at_lo += 1
            bound = st.at_lo >= self.BOUND_VISITS
        elif abs(st.value - st.hi) < half:
            st.at_hi += 1
            bound = st.at_hi >= self.BOUND_VISITS
        if bound:
            limit = max(self.limit(r.quantity, st.rep_bound, bound=True), st.longest + 1)
        else:
            limit = self.limit(r.quantity, st.rep)
        if st.run < limit:  # steps inside an alarm would teach the series to repeat
            x = 1.0 if same else 0.0
            if bound:
                st.steps_bound += 1
                st.rep_bound += max(1.0 / st.steps_bound, 1.0 / 2048) * (x - st.rep_bound)
            else:
                st.steps += 1
                st.rep += max(1.0 / st.steps, 1.0 / 2048) * (x - st.rep)
        if not same:
            if bound and st.run > st.longest:
                st.longest = st.run
            st.value = v
            st.run = 1
            if v < st.lo - half:
                st.lo, st.at_lo = v, 0
            elif v > st.hi + half:
                st.hi, st.at_hi = v, 0
            return NO_OPINION
        st.run += 1
        if st.run < limit:
            return NO_OPINION
        return (min(1.0, 0.5 + 0.5 * (st.run - limit) / limit), ("stuck",))


MANIFEST = Manifest(
    name="stuck",
    kind="module",
    factory=StuckModule,
    sample="stuck.sample.toml",
    readme="../../docs/modules/stuck.md",
)
