"""Log lines that an outsider (or a dead broker) could repeat without end, at most once per
interval per key, with the number left out since."""

from __future__ import annotations

import threading
import time


class Quiet:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}
        self._lock = threading.Lock()

    def due(self, key: str) -> int | None:
        """None while `key` was logged less than `seconds` ago (this one is counted); else how
        many were left out since its last line (the caller logs now)."""
        now = time.monotonic()
        with self._lock:
            last = self._last.get(key)
            if last is not None and now - last < self.seconds:
                self._held[key] = self._held.get(key, 0) + 1
                return None
            self._last[key] = now
            return self._held.pop(key, 0)
