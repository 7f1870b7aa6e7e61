"""The `replay` module's compact per-series state: the same verdicts as the dict + deque it
replaced, in a fraction of the memory."""

from __future__ import annotations

import random
import sys
from collections import deque

import pytest

from gateway.core.reading import Reading
from gateway.modules.replay import ReplayModule


class DictReplay:
    """The former state, kept as the reference: fingerprint -> count in a dict, the order of
    the history in a deque (gateway/modules/replay.py before the arrays)."""

    def __init__(self, k: int, min_distinct: int, history: int) -> None:
        self.k, self.min_distinct, self.history = k, min_distinct, history
        self.last: float | None = None
        self.window: deque[int] = deque(maxlen=k)
        self.seen: dict[int, int] = {}
        self.order: deque[int] = deque()
        self.count = 0

    def judge(self, v: float, resolution: float) -> bool:
        last, self.last = self.last, v
        if last is None:
            return False
        self.window.append(round((v - last) / resolution))
        self.count += 1
        if len(self.window) < self.k:
            return False
        steps = tuple(self.window)
        if 2 * steps.count(0) > self.k or len(set(steps)) < self.min_distinct:
            return False
        fp = hash(steps)
        earlier = self.seen.get(fp)
        self.seen[fp] = self.count
        self.order.append(fp)
        if len(self.order) > self.history:
            old = self.order.popleft()
            if self.seen.get(old, self.count) <= self.count - self.history:
                del self.seen[old]
        return earlier is not None and self.count - earlier >= self.k


def _series(seed: int, n: int) -> list[float]:
    """A coarse random walk (fingerprints repeat by chance) with copied segments (on purpose):
    half of them from the last 60 readings, so short histories see them and some overlap."""
    rnd = random.Random(seed)
    values: list[float] = []
    v = 20.0
    while len(values) < n:
        if len(values) > 50 and rnd.random() < 0.01:
            start = rnd.randrange(
                len(values) - (60 if rnd.random() < 0.5 else len(values)), len(values)
            )
            values.extend(values[start : start + rnd.randrange(5, 40)])
            continue
        v += rnd.choice((-3, -2, -1, 0, 1, 2, 3)) * 0.1
        values.append(round(v, 1))
    return values[:n]


def _remembered(mod: ReplayModule, key: str) -> dict[int, int]:
    st = mod.state[key]
    return {st.fps[pos]: st.counts[pos] for pos in st.slots if pos != st.empty}


@pytest.mark.parametrize(
    ("history", "window", "min_distinct", "seed"),
    [
        (16, 4, 2, 1),  # tiny history: expiry on almost every reading
        (17, 5, 3, 2),
        (64, 12, 4, 3),
        (200, 4, 2, 4),
        (8192, 12, 4, 5),  # the default: the table grows to its full size
        (70_000, 4, 2, 6),  # over 65534 positions: 32-bit slots
    ],
)
def test_same_verdicts_and_memory_as_the_dict(
    history: int, window: int, min_distinct: int, seed: int
) -> None:
    opts = {
        "history": history,
        "window": window,
        "min_distinct": min_distinct,
        "resolutions": {"temperature": 0.1},
    }
    mod = ReplayModule(module_id="r", options=opts)
    ref = DictReplay(window, min_distinct, history)
    flagged = 0
    for i, v in enumerate(_series(seed, 20_000)):
        (verdict,) = mod.judge([Reading("s", "temperature", "Cel", v, float(i), True)])
        want = ref.judge(v, 0.1)
        assert verdict == ((0.9, ("replay",)) if want else (0.0, ())), i
        flagged += want
    assert flagged > 0  # the copies were found, so the comparison covered verdicts both ways
    st = mod.state["s/temperature"]
    assert _remembered(mod, "s/temperature") == ref.seen
    assert st.used == len(ref.seen) <= history
    assert list(st.fps[st.head :]) + list(st.fps[: st.head]) == list(ref.order)
    assert mod.remembered("s/temperature") == len(ref.order)


def test_a_full_default_series_stays_small() -> None:
    mod = ReplayModule(module_id="r", options={})
    rnd = random.Random(7)
    v = 0.0
    for i in range(3 * mod.history):  # noisy enough that nearly every window passes the gate
        v += rnd.choice((-5, -3, -2, -1, 1, 2, 3, 5)) * 0.01
        mod.judge([Reading("s", "temperature", "Cel", v, float(i), True)])
    st = mod.state["s/temperature"]
    assert mod.remembered("s/temperature") == mod.history
    size = sum(sys.getsizeof(a) for a in (st.fps, st.counts, st.slots))
    assert size < 200_000  # the dict + deque held ~1.2 MB here


def test_a_series_that_rarely_passes_the_gate_keeps_a_small_table() -> None:
    mod = ReplayModule(module_id="r", options={})
    for i in range(5000):  # a slow ramp: every window is flat
        mod.judge([Reading("s", "pm1", "ug/m3", 0.1 * (i // 50), float(i), True)])
    st = mod.state["s/pm1"]
    assert st.used == 0 and len(st.slots) == 64
