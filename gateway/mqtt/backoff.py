"""The one reconnect backoff: capped, exponential, jittered.

Many gateways (or attestor workers, or dashboards) that lose one broker at the same moment must
not come back in lockstep, so every delay is drawn from the upper half of its step: step n
waits between half and all of min(cap, base * 2**n).
"""

from __future__ import annotations

import random

#: steps beyond this do not grow the delay (2**30 * base is past any cap; no float overflow)
MAX_STEP = 30


class Backoff:
    """Delays to wait between attempts: `next(backoff)` gives the next one, `reset()` starts
    again from the first (after an attempt that succeeded)."""

    def __init__(self, cap: float, *, base: float = 0.5) -> None:
        if base <= 0 or cap <= 0:
            raise ValueError(f"backoff needs a positive base and cap, got {base} and {cap}")
        self.cap = cap
        self.base = min(base, cap)
        self._step = 0

    def __iter__(self) -> Backoff:
        return self

    def __next__(self) -> float:
        ceiling = min(self.cap, self.base * 2.0**self._step)
        self._step = min(self._step + 1, MAX_STEP)
        return ceiling * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._step = 0
