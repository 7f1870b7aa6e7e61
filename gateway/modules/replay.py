"""Rule module:
`replay`: the last k quantised first differences were seen before, as a block, in this
series: a copied segment. Flat or nearly flat windows never count (a variation gate), since any
two calm nights look alike.

State is kept per series (`sensor/quantity`) and a reading is judged only from what came
before it: the chain calls `judge` once per sensor read, in time order.
"""

from __future__ import annotations

from array import array
from collections import deque
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

# --------------------------------------------------------------------------- replay


#: slots of a new series' table; it doubles as fingerprints arrive (a series whose windows
#: rarely pass the variation gate never pays for the full table)
_FIRST_SLOTS = 64


class _ReplayState:
    """One series' window and remembered fingerprints, in flat arrays of machine integers.

    The history was a dict fingerprint -> count plus a deque of fingerprints in order: ~1.2 MB
    per series at the default history of 8192 (an int object per key and per value, 24 bytes
    per dict entry, and expiry churn resizing the dict to 2**15 slots), the gateway's largest
    state by far. Here the order is a ring of (fingerprint, count) in two array('q'), and the
    dict is an open-addressing table (linear probing, backward-shift deletion, load <= 2/3)
    of ring positions in an array of 16-bit (or, for a history over 65534, 32-bit) integers:
    a remembered fingerprint's slot holds the ring position of its latest occurrence, which
    is in the ring for as long as the fingerprint is remembered. ~160 kB per full series.
    Lookups, updates and expiry are the dict's, step for step, so the verdicts are the same.
    """

    __slots__ = (
        "count",
        "counts",
        "empty",
        "fps",
        "head",
        "last",
        "mask",
        "slots",
        "typecode",
        "used",
        "window",
    )

    def __init__(self, k: int, history: int) -> None:
        self.last: float | None = None
        self.window: deque[int] = deque(maxlen=k)
        self.count = 0
        self.fps = array("q")  # ring: fingerprints remembered; once full, oldest at `head`
        self.counts = array("q")  # ring: the reading count at which each was seen
        self.head = 0
        self.typecode = "H" if history < 0xFFFF else "I"
        self.empty = 0xFFFF if self.typecode == "H" else 0xFFFFFFFF  # above any ring position
        self.slots = array(self.typecode, [self.empty]) * _FIRST_SLOTS
        self.mask = _FIRST_SLOTS - 1
        self.used = 0  # occupied slots

    def _slot(self, fp: int) -> int:
        """The slot of `fp`, or the empty slot where it belongs."""
        slots, fps, mask, empty = self.slots, self.fps, self.mask, self.empty
        i = fp & mask
        while True:
            pos = slots[i]
            if pos == empty or fps[pos] == fp:
                return i
            i = (i + 1) & mask

    def see(self, fp: int, count: int, history: int) -> int | None:
        """Remember that `fp` was seen at `count`, forget what leaves the history, and return
        the count at which `fp` was last seen before (None: not remembered). The same steps as
        `earlier = seen.get(fp); seen[fp] = count; order.append(fp)`, then, past `history`,
        `old = order.popleft()` and `del seen[old]` if it was last seen `history` ago."""
        fps, counts, slots = self.fps, self.counts, self.slots
        mask, empty = self.mask, self.empty
        full = len(fps) == history
        pos = self.head if full else len(fps)
        if full and (old := fps[pos]) != fp:
            # `old` leaves the ring; drop it before its position is reused. Its latest
            # occurrence is always `history` or more ago when that is this very position.
            i = old & mask
            while (at := slots[i]) != empty:
                if fps[at] == old:
                    if at == pos or counts[at] <= count - history:
                        self._delete(i)
                    break
                i = (i + 1) & mask
        i = fp & mask  # the slot of fp, or the empty slot where it belongs (as in _slot)
        while (at := slots[i]) != empty and fps[at] != fp:
            i = (i + 1) & mask
        earlier = None if at == empty else counts[at]
        if full:
            fps[pos] = fp
            counts[pos] = count
            self.head = (pos + 1) % history
        else:
            fps.append(fp)
            counts.append(count)
        if earlier is None:
            if 3 * (self.used + 1) > 2 * len(slots):  # keep probes short
                self._grow()
                slots = self.slots
                i = self._slot(fp)
            self.used += 1
        slots[i] = pos
        return earlier

    def _delete(self, i: int) -> None:
        slots, fps, mask, empty = self.slots, self.fps, self.mask, self.empty
        # Backward shift: move up every later entry of the cluster that may sit in the hole
        # (its home slot is not cyclically in (i, j]), so no lookup ever stops short of it.
        j = i
        while True:
            j = (j + 1) & mask
            pos = slots[j]
            if pos == empty:
                break
            home = fps[pos] & mask
            if (home <= i or home > j) if i < j else (home <= i and home > j):
                slots[i] = pos
                i = j
        slots[i] = empty
        self.used -= 1

    def _grow(self) -> None:
        old = self.slots
        self.slots = array(self.typecode, [self.empty]) * (2 * len(old))
        self.mask = len(self.slots) - 1
        for pos in old:
            if pos != self.empty:
                self.slots[self._slot(self.fps[pos])] = pos


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
    USES_CHIP_FACTS = True
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

    def remembered(self, key: str) -> int:
        """Fingerprints remembered for series `key` (at most `history`)."""
        st = self.state.get(key)
        return 0 if st is None else len(st.fps)

    def judge(self, readings: Sequence[Reading]) -> Sequence[Verdict]:
        return [self._one(r) for r in readings]

    def _one(self, r: Reading) -> Verdict:
        v = r.value
        if v is None:
            return NO_OPINION
        key = r.name
        st = self.state.get(key)
        if st is None:
            st = self.state[key] = _ReplayState(self.k, self.history)
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
        count = st.count
        earlier = st.see(fp, count, self.history)
        if earlier is None or count - earlier < self.k:
            return NO_OPINION
        return (0.9, ("replay",))


MANIFEST = Manifest(
    name="replay",
    kind="module",
    factory=ReplayModule,
    sample="replay.sample.toml",
    readme="../../docs/modules/replay.md",
)
