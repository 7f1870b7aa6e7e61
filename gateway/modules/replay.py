"""Rule module:
`replay`: the last k quantised first differences were seen before, as a block, in this
series: a copied segment. Flat or nearly flat windows never count (a variation gate), since any
two calm nights look alike.

State is kept per series (`sensor/quantity`) and a reading is judged only from what came
before it: the chain calls `judge` once per sensor read, in time order.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from gateway.modules.base import NO_OPINION, DetectionModule, Verdict
from gateway.modules.series import (
    FALLBACK_RESOLUTION,
    check_number_table,
    module_options,
    resolutions,
)
from gateway.reading import Reading
from gateway.schema import Field

# --------------------------------------------------------------------------- replay


class _ReplayState:
    __slots__ = ("count", "last", "order", "seen", "window")

    def __init__(self, k: int) -> None:
        self.last: float | None = None
        self.window: deque[int] = deque(maxlen=k)
        self.seen: dict[int, int] = {}  # fingerprint hash -> reading count when last seen
        self.order: deque[int] = deque()
        self.count = 0


class ReplayModule(DetectionModule):
    """A block of readings that repeats an earlier block of the same series step for step.

    The fingerprint is the last `window` first differences, quantised to the resolution; a
    window passes the variation gate only with at least `min_distinct` different steps and at
    least half of them non-zero. Fingerprints of the last `history` readings are remembered; a
    window seen before (and not overlapping itself) is a replay. Differences, not values, so a
    copy that was shifted by an offset is still found.
    """

    name = "replay"
    version = "1.0.0"
    SAMPLE_CONFIG: ClassVar[str] = """\
[[module]]
id = "replay"
kind = "replay"
window = 12
history = 8192
"""
    CONFIG: ClassVar[Mapping[str, Field]] = {
        "window": Field("int", "first differences in one fingerprint", default=12, min=4),
        "min_distinct": Field(
            "int", "distinct quantised steps a window needs to count", default=4, min=2
        ),
        "history": Field(
            "int", "readings whose fingerprints are remembered per series", default=8192, min=16
        ),
        "resolutions": Field(
            "table",
            "per-quantity step used to quantise differences",
            default={},
            check=check_number_table,
        ),
    }

    def __init__(self, *, module_id: str, options: Mapping[str, Any]) -> None:
        super().__init__(module_id=module_id, options=options)
        o = module_options(type(self), options)
        self.k = int(o["window"])
        self.min_distinct = int(o["min_distinct"])
        self.history = int(o["history"])
        self.resolution = resolutions(o["resolutions"])
        self.state: dict[str, _ReplayState] = {}

    def judge(self, readings: Sequence[Reading]) -> Sequence[Verdict]:
        return [self._one(r) for r in readings]

    def _one(self, r: Reading) -> Verdict:
        v = r.value
        if v is None:
            return NO_OPINION
        key = r.name
        st = self.state.get(key)
        if st is None:
            st = self.state[key] = _ReplayState(self.k)
        last = st.last
        st.last = v
        if last is None:
            return NO_OPINION
        win = st.window
        win.append(round((v - last) / self.resolution.get(r.quantity, FALLBACK_RESOLUTION)))
        st.count += 1
        if len(win) < self.k:
            return NO_OPINION
        steps = tuple(win)
        if 2 * steps.count(0) > self.k or len(set(steps)) < self.min_distinct:
            return NO_OPINION
        fp = hash(steps)  # 8 bytes kept instead of the tuple: a long history stays small
        seen = st.seen
        earlier = seen.get(fp)
        seen[fp] = st.count
        st.order.append(fp)
        if len(st.order) > self.history:
            old = st.order.popleft()
            if seen.get(old, st.count) <= st.count - self.history:
                del seen[old]
        if earlier is None or st.count - earlier < self.k:
            return NO_OPINION
        return (0.9, ("replay",))
