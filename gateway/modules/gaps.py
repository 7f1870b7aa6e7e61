"""Rule module:
`dropout` and `warmup`: the first good reading after failed reads or a gap of several usual
intervals, so a consumer knows the series has a hole before it; and the first readings after a
series starts, recovers or resumes, while warming sensors (fans, NDIR lamps, heaters) read off.

State is kept per series (`sensor/quantity`) and a reading is judged only from what came
before it: the chain calls `judge` once per sensor read, in time order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from gateway.core.fields import Field
from gateway.core.manifest import Manifest
from gateway.core.reading import Reading
from gateway.modules.base import NO_OPINION, DetectionModule, Verdict
from gateway.modules.series import (
    median,
    module_options,
)

# --------------------------------------------------------------------------- dropout


class _GapState:
    __slots__ = ("failures", "good", "intervals", "last_t")

    def __init__(self, t: float) -> None:
        self.last_t = t
        self.intervals: deque[float] = deque(maxlen=9)
        self.failures = 0
        self.good = 0  # good readings since the series (re)started


def _failed(r: Reading) -> bool:
    """A read that should have had a value and has none. A warming sensor's read without a
    value is not one: its driver flags it `warmup`. A read that failed is flagged
    `sensor-error`, and stays a failure even if something also called it a warm-up."""
    return r.value is None and ("warmup" not in r.flags or "sensor-error" in r.flags)


def _usual(intervals: deque[float]) -> float | None:
    if len(intervals) < 3:
        return None
    return median(sorted(intervals))


class DropoutModule(DetectionModule):
    """The first good reading after a hole in the series: failed reads (no value, flag
    `sensor-error`) or a gap longer than `gap_factor` times the usual interval (the median of
    the last few). Its score grows with the number of reads missed.

    A read without a value flagged `warmup` is no failure: the sensor answered on time and said
    it is still warming up (a PM sensor's fan spinning up), as it is designed to. It counts as a
    read for the intervals, and failures before it still make the next good reading a dropout.
    """

    name = "dropout"
    version = "1.1.0"
    CONFIG: ClassVar[Mapping[str, Field]] = {
        "gap_factor": Field(
            "float", "a gap this many usual intervals long is a dropout", default=2.5, min=1.1
        ),
    }

    def __init__(self, *, module_id: str, options: Mapping[str, Any]) -> None:
        super().__init__(module_id=module_id, options=options)
        o = module_options(type(self), options)
        self.gap_factor = float(o["gap_factor"])
        self.state: dict[str, _GapState] = {}

    def judge(self, readings: Sequence[Reading]) -> Sequence[Verdict]:
        return [self._one(r) for r in readings]

    def _one(self, r: Reading) -> Verdict:
        key = r.name
        st = self.state.get(key)
        if st is None:
            st = self.state[key] = _GapState(r.t)
            if _failed(r):
                st.failures = 1
            return NO_OPINION
        gap = r.t - st.last_t
        st.last_t = r.t
        usual = _usual(st.intervals)
        long_gap = usual is not None and gap > self.gap_factor * usual
        if not long_gap and gap > 0:
            st.intervals.append(gap)
        if r.value is None:
            if _failed(r):
                st.failures += 1
            return NO_OPINION
        missed = st.failures
        st.failures = 0
        if long_gap and usual is not None:
            missed += max(1, round(gap / usual) - 1)
        if not missed:
            return NO_OPINION
        return (min(1.0, 0.5 + 0.05 * missed), ("dropout",))


# --------------------------------------------------------------------------- warm-up


class WarmupModule(DetectionModule):
    """The first `readings` good readings of a series after it starts, after a run of
    `after_failures` failed reads, or after a gap longer than both `restart_gap` and
    `gap_factor` usual intervals (the sensor was off). Flag only: a warming sensor is expected,
    not anomalous, but its values are not yet to be trusted."""

    name = "warmup"
    version = "1.0.0"
    CONFIG: ClassVar[Mapping[str, Field]] = {
        "readings": Field("int", "good readings flagged after a (re)start", default=3, min=1),
        "after_failures": Field(
            "int", "failed reads in a row that count as a restart", default=1, min=1
        ),
        "restart_gap": Field(
            "duration", "a gap at least this long counts as a restart", default=600.0, min=0
        ),
        "gap_factor": Field(
            "float", "...and at least this many usual intervals long", default=5.0, min=1.1
        ),
    }

    _FLAG: ClassVar[Verdict] = (0.0, ("warmup",))

    def __init__(self, *, module_id: str, options: Mapping[str, Any]) -> None:
        super().__init__(module_id=module_id, options=options)
        o = module_options(type(self), options)
        self.count = int(o["readings"])
        self.after_failures = int(o["after_failures"])
        self.restart_gap = float(o["restart_gap"])
        self.gap_factor = float(o["gap_factor"])
        self.state: dict[str, _GapState] = {}

    def judge(self, readings: Sequence[Reading]) -> Sequence[Verdict]:
        return [self._one(r) for r in readings]

    def _one(self, r: Reading) -> Verdict:
        key = r.name
        st = self.state.get(key)
        if st is None:
            st = self.state[key] = _GapState(r.t)
        else:
            gap = r.t - st.last_t
            st.last_t = r.t
            usual = _usual(st.intervals)
            if gap > self.restart_gap and (usual is None or gap > self.gap_factor * usual):
                st.good = 0
            elif gap > 0:
                st.intervals.append(gap)
        if r.value is None:
            st.failures += 1
            if st.failures >= self.after_failures:
                st.good = 0
            return NO_OPINION
        st.failures = 0
        st.good += 1
        return self._FLAG if st.good <= self.count else NO_OPINION


DROPOUT = Manifest(
    name="dropout",
    kind="module",
    factory=DropoutModule,
    sample="dropout.sample.toml",
    readme="../../docs/modules/dropout.md",
)


WARMUP = Manifest(
    name="warmup",
    kind="module",
    factory=WarmupModule,
    sample="warmup.sample.toml",
    readme="../../docs/modules/warmup.md",
)
