"""Rule module:
`drift`: a series that has moved away from its own expected level and stays there: a slow drift
or a level shift. The expected level is a slow baseline plus the series' daily shape; the
residual against it is smoothed, and its size judged against how far the smoothed residual of
this series usually strays.

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
    FALLBACK_RESOLUTION,
    check_number_table,
    module_options,
    resolutions,
)


class _DriftState:
    __slots__ = ("alarm", "dev", "fast", "level", "seen", "shape", "spread", "t", "z")

    def __init__(self, v: float, t: float, bins: int) -> None:
        self.t = t
        self.seen = 0.0  # seconds watched
        self.level = v  # slow baseline
        self.shape = [0.0] * bins  # daily shape: mean offset from the baseline per time of day
        self.dev = 0.0  # mean |residual|, to clip single outliers before smoothing
        self.fast = 0.0  # smoothed residual
        self.spread = 0.0  # mean |smoothed residual| while healthy
        self.alarm = False
        self.z = 0.0  # the last robust z (for tools)


class DriftModule(DetectionModule):
    """A level that has left the series' expected level for longer than a moment.

    Expected level: an exponential baseline with time constant `slow`, plus a daily shape (the
    mean offset from the baseline in each of `bins` parts of `period`; `bins = 1` for none).
    The residual of each reading against it is clipped (one outlier is the spikes module's) and
    smoothed with time constant `fast`; the smoothed residual's robust z is its size over the
    mean size it had while healthy (memory `memory`, floored at the resolution). A z beyond
    `threshold` flags the reading, and the flag holds until z falls below half of it. Nothing
    is judged before the series has been watched for `warmup`. Time constants are durations,
    so the rule means the same at any sampling rate.
    """

    name = "drift"
    version = "1.0.0"
    USES_CHIP_FACTS = True
    CONFIG: ClassVar[Mapping[str, Field]] = {
        "slow": Field(
            "duration",
            "time constant of the expected level's baseline",
            default=7 * 86400.0,
            min=1,
        ),
        "fast": Field("duration", "time constant of the smoothed residual", default=3600.0, min=0),
        "memory": Field(
            "duration",
            "time constant of the residual's usual size (the z-score's scale)",
            default=30 * 86400.0,
            min=1,
        ),
        "period": Field(
            "duration", "length of the cycle in the expected level", default=86400.0, min=1
        ),
        "bins": Field(
            "int", "parts of `period` with their own offset (1: no cycle)", default=24, min=1
        ),
        "threshold": Field(
            "float", "robust z of the smoothed residual that is a drift", default=4.0, min=1
        ),
        "warmup": Field(
            "duration", "time a series is watched before it is judged", default=2 * 86400.0, min=0
        ),
        "log_quantities": Field(
            "str-list",
            "quantities judged on a log scale: concentrations vary by factors, not by amounts",
            default=["pm1", "pm2_5", "pm10"],
        ),
        "resolutions": Field(
            "table",
            "per-quantity output resolution (the smallest spread assumed)",
            default={},
            check=check_number_table,
        ),
    }

    #: residuals beyond this many mean deviations are clipped before smoothing
    CLIP = 4.0

    def __init__(self, *, module_id: str, options: Mapping[str, Any]) -> None:
        super().__init__(module_id=module_id, options=options)
        o = module_options(type(self), options)
        self.slow = float(o["slow"])
        self.fast = float(o["fast"])
        self.memory = float(o["memory"])
        self.period = float(o["period"])
        self.bins = int(o["bins"])
        self.threshold = float(o["threshold"])
        self.warmup = float(o["warmup"])
        self.resolution = resolutions(o["resolutions"])
        self.log_quantities = frozenset(o["log_quantities"])
        self.state: dict[str, _DriftState] = {}
        self._dt = math.nan
        self._a = (1.0, 1.0, 0.0, 1.0)

    def judge(self, readings: Sequence[Reading]) -> Sequence[Verdict]:
        return [self._one(r) for r in readings]

    def _alphas(self, dt: float) -> tuple[float, float, float, float]:
        """Smoothing weights of one step of `dt` seconds (fast, slow, shape, memory); series
        are read at a steady interval, so the last answer is kept."""
        if dt != self._dt:
            self._dt = dt
            self._a = (
                1.0 - math.exp(-dt / self.fast) if self.fast > 0 else 1.0,
                1.0 - math.exp(-dt / self.slow),
                1.0 - math.exp(-dt * self.bins / self.memory) if self.bins > 1 else 0.0,
                1.0 - math.exp(-dt / self.memory),
            )
        return self._a

    def _one(self, r: Reading) -> Verdict:
        v = r.value
        if v is None:
            return NO_OPINION
        q = r.quantity
        res = self.resolution.get(q, FALLBACK_RESOLUTION)
        if q in self.log_quantities:
            # a log scale's resolution: one count at the lower end, a percent at the least
            v, res = math.log(max(v, res)), max(0.01, math.log(1.0 + res / max(v, res)))
        t = r.t
        st = self.state.get(r.name)
        if st is None:
            self.state[r.name] = _DriftState(v, t, self.bins)
            return NO_OPINION
        dt = t - st.t
        if dt <= 0:
            return NO_OPINION
        st.t = t
        st.seen += dt
        a_fast, a_slow, a_shape, a_mem = self._alphas(dt)
        b = int((t % self.period) * self.bins / self.period) % self.bins
        shape = st.shape
        resid = v - st.level - shape[b]
        # the step towards a new residual is clipped: one outlier moves the smoothed residual
        # a little, a residual that stays moves it all the way
        step = resid - st.fast
        lim = self.CLIP * st.dev
        if 0 < lim < abs(step):
            step = lim if step > 0 else -lim
        st.fast += a_fast * step
        scale = 1.25 * st.spread
        if scale < res:
            scale = res
        z = st.fast / scale
        az = abs(z)
        st.z = z
        alarm = st.seen >= self.warmup and (
            az >= self.threshold or (st.alarm and az >= 0.5 * self.threshold)
        )
        st.alarm = alarm
        # learn: the baseline always follows (a level shift is flagged, then becomes normal);
        # the usual size only while healthy, or a drift would teach it to expect drifts
        st.level += a_slow * (v - shape[b] - st.level)
        shape[b] += a_shape * (v - st.level - shape[b])
        if st.seen < dt / a_mem:
            a_mem = dt / st.seen  # a plain mean while young
        st.dev += a_mem * (abs(resid) - st.dev)
        if not alarm:
            st.spread += a_mem * (az * scale - st.spread)
            return NO_OPINION
        return (min(1.0, 0.5 * az / self.threshold), ("drift",))


MANIFEST = Manifest(
    name="drift",
    kind="module",
    factory=DriftModule,
    sample="drift.sample.toml",
    readme="../../docs/modules/drift.md",
)
