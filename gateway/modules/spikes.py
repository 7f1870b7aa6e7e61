"""Rule module:
`spikes`: a first difference far outside the rolling robust (median/MAD) spread of recent
differences, or an up-and-back-down pair of them. Differences, not levels, because a diurnal
cycle moves the level a lot but each step only a little. The step back after a flagged spike is
judged against the level before the spike, not against the spike.

State is kept per series (`sensor/quantity`) and a reading is judged only from what came
before it: the chain calls `judge` once per sensor read, in time order.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from gateway.core.fields import Field
from gateway.core.manifest import Manifest
from gateway.core.reading import Reading
from gateway.modules.base import NO_OPINION, DetectionModule, Verdict
from gateway.modules.series import (
    check_number_table,
    median,
    module_options,
    resolutions,
)

# --------------------------------------------------------------------------- spikes


class _SpikeState:
    __slots__ = (
        "before",
        "diffs",
        "first",
        "last",
        "med",
        "prev_z",
        "quantum",
        "run",
        "scale",
        "since",
        "step",
    )

    def __init__(self, window: int) -> None:
        self.diffs: deque[float] = deque(maxlen=window)
        self.last: float | None = None
        self.med = 0.0
        self.scale = 0.0
        self.prev_z = 0.0
        self.since = 0  # differences added since the baseline was last recomputed
        self.quantum = math.inf  # smallest change seen: the series' own resolution
        self.step = 0.0  # slow average size of the changes (steps that are not zero)
        # While the last reading is a spike (a run of them, started by one flagged by itself):
        # the value before the run, the run's first value and how many readings it has.
        self.before: float | None = None
        self.first = 0.0
        self.run = 0


class SpikeModule(DetectionModule):
    """A single sample far off the recent step sizes.

    The baseline is the median and MAD of the last `window` first differences (recomputed every
    `refresh` readings, which is what keeps it cheap). A step out followed by a step back, both
    beyond `pair_threshold`, flags the reading after the spike; a step beyond `threshold` is a
    spike at once. Flagged steps stay out of the baseline.

    After a spike flagged by itself, a reading is judged as a step from whichever is nearest:
    the level before the spike (it is the step back, flagged only if it is a spike from there,
    past the old level the other way), the spike (it started a new level: an ordinary step) or,
    after a run of spikes, the run's first value (that one started a new level). A reading
    already flagged `range` by a module before this one in the chain (`ranges`, first in the
    sample configuration) is no value of the series: it is not judged, and the next reading is
    judged from the value before it.

    The spread never goes below the series' resolution (the configured one, or the smallest
    change the series has shown, whichever is larger) nor below `step_floor` times the usual
    size of its changes: after a stuck run or in a flat stretch the recent steps are all zero,
    and the next ordinary step (one 1 hPa count of a barometer) would otherwise look huge.
    """

    name = "spikes"
    version = "1.1.0"
    USES_CHIP_FACTS = True
    CONFIG: ClassVar[Mapping[str, Field]] = {
        "window": Field("int", "first differences in the rolling baseline", default=64, min=8),
        "refresh": Field(
            "int", "recompute the median/MAD every this many readings", default=4, min=1
        ),
        "threshold": Field(
            "float",
            "robust z of one step that is a spike by itself, before any step back (a jump "
            "that stays is a level shift: the drift module's)",
            default=16.0,
            min=1,
        ),
        "pair_threshold": Field(
            "float",
            "robust z that a step out and the step back must both reach",
            default=4.0,
            min=1,
        ),
        "step_floor": Field(
            "float",
            "smallest spread, as a share of the series' usual non-zero step (slow average)",
            default=0.5,
            min=0,
        ),
        "resolutions": Field(
            "table",
            "per-quantity output resolution (the smallest spread the baseline assumes)",
            default={},
            check=check_number_table,
        ),
    }

    #: weight of one change in the slow average of change sizes
    STEP_RATE = 1.0 / 256

    def __init__(self, *, module_id: str, options: Mapping[str, Any]) -> None:
        super().__init__(module_id=module_id, options=options)
        o = module_options(type(self), options)
        self.window = int(o["window"])
        self.refresh = int(o["refresh"])
        self.warmup = min(self.window, 24)
        self.threshold = float(o["threshold"])
        self.pair_threshold = float(o["pair_threshold"])
        self.step_floor = float(o["step_floor"])
        self.resolution = resolutions(o["resolutions"])
        self.state: dict[str, _SpikeState] = {}

    def judge(self, readings: Sequence[Reading]) -> Sequence[Verdict]:
        return [self._one(r) for r in readings]

    def _change(self, st: _SpikeState, d: float, res: float) -> None:
        """The series' own resolution and usual change size learn from every step, flagged or
        not: a series whose changes come in bursts (a particle counter near zero, a series
        resting at a bound) must learn how big its bursts are."""
        a = abs(d)
        if a >= 0.5 * res:  # a change, as the configured resolution sees it
            if a < st.quantum:
                st.quantum = a
            st.step += max(self.STEP_RATE, 1.0 / (1 + len(st.diffs))) * (a - st.step)

    def _one(self, r: Reading) -> Verdict:
        v = r.value
        if v is None or "range" in r.flags:
            # A value no sensor of the kind can report says nothing about the series' steps:
            # taken as the last value, it would make the good reading after it a huge step (a
            # flagged "spike" on a correct reading), and learnt as a change size, it would
            # inflate the spread floor until real spikes are missed.
            return NO_OPINION
        key = r.name
        st = self.state.get(key)
        if st is None:
            st = self.state[key] = _SpikeState(self.window)
        last = st.last
        st.last = v
        if last is None:
            return NO_OPINION
        d = v - last
        diffs = st.diffs
        res = self.resolution.get(r.quantity, 1e-9)
        self._change(st, d, res)
        if len(diffs) < self.warmup:
            diffs.append(d)
            st.since = self.refresh  # recompute as soon as the baseline is usable
            return NO_OPINION
        if st.since >= self.refresh:
            s = sorted(diffs)
            med = median(s)
            dev = sorted(abs(x - med) for x in s)
            st.med = med
            # MAD, or the 90th percentile of deviations for series whose steps are mostly zero
            # (coarse sensors, calm nights) and would otherwise get a near-zero spread
            q90 = dev[(9 * len(dev)) // 10] / 1.645
            quantum = st.quantum if st.quantum < math.inf else 0.0
            floor = max(res, quantum, self.step_floor * st.step)
            st.scale = max(1.4826 * median(dev), q90, floor)
            st.since = 0
        z = (d - st.med) / st.scale
        az = abs(z)
        before = st.before
        st.before = None
        if before is not None:
            # The last reading was a spike. A step back from it is as big as the spike and says
            # nothing about this reading: judged from the nearest level instead. A reversed sign
            # alone would not do: it would also pass a step far past the old level (a spike the
            # other way, or a spike down from a level that jumped and stays).
            n = st.run
            z_before = (v - before - (n + 1) * st.med) / st.scale  # n + 1 steps ago
            z_first = (v - st.first - n * st.med) / st.scale  # n steps ago (the last if n is 1)
            zr = z_before if abs(z_before) <= abs(z_first) else z_first
            if abs(zr) < az:
                st.prev_z = 0.0  # a step back pairs with nothing
                st.since += 1
                if abs(zr) < self.threshold:
                    return NO_OPINION  # back at a level: the run is over
                st.before = before
                st.run = n + 1
                return (min(1.0, 0.5 * abs(zr) / self.threshold), ("spike",))
        prev = st.prev_z
        st.prev_z = z
        if az >= self.threshold:
            hit = az / self.threshold
            if before is None:  # a run of spikes starts
                before, st.first, st.run = last, v, 0
            st.before = before
            st.run += 1
        elif az >= self.pair_threshold and abs(prev) >= self.pair_threshold and prev * z < 0:
            hit = min(az, abs(prev)) / self.pair_threshold
            st.prev_z = 0.0  # the pair is used up: the next step starts afresh
            if before is not None:  # a spike within a run: the run goes on
                st.before = before
                st.run += 1
        else:
            diffs.append(d)
            st.since += 1
            return NO_OPINION
        st.since += 1
        return (min(1.0, 0.5 * hit), ("spike",))


MANIFEST = Manifest(
    name="spikes",
    kind="module",
    factory=SpikeModule,
    sample="spikes.sample.toml",
    readme="../../docs/modules/spikes.md",
)
