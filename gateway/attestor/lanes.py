"""The worker's inbox: two lanes, bounded in messages and in bytes.

Messages arrive in paho's thread and are stored in the worker's. Signed batches and births of
registered devices go into the priority lane, which the worker always empties first; everything
else (unsigned bytes, unregistered signers, anything the cheap checks could not place) goes into
the junk lane. Whatever junk is sent, an honest batch waits behind at most the one message the
worker is busy with.

The lanes share one byte budget (`inbox_bytes`). The junk lane may hold half of it: when full,
a message is dropped (the caller acks and counts it), never waited for, so junk can neither hold
paho's thread nor the broker's in-flight window. The priority lane may use the whole budget less
what junk holds; when that is full, the caller waits (flow control towards the broker, as the
signed batches of registered devices must not be lost). A lane that is empty always takes one
message, so a message larger than its share still passes.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass

#: messages per lane, whatever their size
MAX_MESSAGES = 2000


@dataclass(frozen=True)
class Item:
    """One message as paho delivered it. `acked`: already acknowledged (junk is acked on
    arrival); `connection`: the connection its mid belongs to (see Worker._on_connect)."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    connection: int
    acked: bool


class Lanes:
    def __init__(self, max_bytes: int, max_messages: int = MAX_MESSAGES) -> None:
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        self._priority: deque[Item] = deque()
        self._junk: deque[Item] = deque()
        self._bytes = {"priority": 0, "junk": 0}
        self._cond = threading.Condition()

    @property
    def held(self) -> int:
        """Bytes queued in both lanes."""
        with self._cond:
            return self._bytes["priority"] + self._bytes["junk"]

    def __len__(self) -> int:
        with self._cond:
            return len(self._priority) + len(self._junk)

    def put_junk(self, item: Item) -> bool:
        """Queue `item` in the junk lane; False (nothing queued) when the lane is full."""
        size = len(item.payload)
        with self._cond:
            used = self._bytes["junk"]
            if self._junk and (
                len(self._junk) >= self.max_messages
                or used + size > self.max_bytes // 2
                or used + size + self._bytes["priority"] > self.max_bytes
            ):
                return False
            self._junk.append(item)
            self._bytes["junk"] += size
            self._cond.notify_all()
            return True

    def put_priority(self, item: Item, stop: threading.Event, timeout: float = 0.5) -> bool:
        """Queue `item` in the priority lane, waiting while it is full; False when `stop` was
        set first (the message stays unacked: the broker delivers it again)."""
        size = len(item.payload)
        with self._cond:
            while self._priority and (
                len(self._priority) >= self.max_messages
                or self._bytes["priority"] + self._bytes["junk"] + size > self.max_bytes
            ):
                if stop.is_set():
                    return False
                self._cond.wait(timeout)
            self._priority.append(item)
            self._bytes["priority"] += size
            self._cond.notify_all()
            return True

    def get(self, timeout: float) -> Item | None:
        """The next message, priority first; None when none came within `timeout`."""
        with self._cond:
            if not (self._priority or self._junk):
                self._cond.wait(timeout)
            for name, lane in (("priority", self._priority), ("junk", self._junk)):
                if lane:
                    item = lane.popleft()
                    self._bytes[name] -= len(item.payload)
                    self._cond.notify_all()
                    return item
            return None
