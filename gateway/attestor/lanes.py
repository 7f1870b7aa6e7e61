"""The worker's inbox: two lanes, bounded in messages and in bytes.

Messages arrive in paho's thread and are stored in the worker's. Signed batches and births of
registered devices go into the priority lane, which the worker always empties first; everything
else (unsigned bytes, unregistered signers, anything the cheap checks could not place) goes into
the junk lane. Whatever junk is sent, an honest batch waits behind at most the one message the
worker is busy with.

The priority lane serves devices in turn: one message of each device that has any waiting, then
the next round, each device's own messages in their arrival order. A device that sends without
end (its own batches, or an outsider replaying them) delays the others by one message per round,
never by its whole backlog.

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
    #: the device id the priority lane takes turns by (the topic's, which is the signer's)
    device: str = ""
    #: sha256 of the whole message (gate.Recent's key), computed once on arrival
    key: bytes = b""


class Lanes:
    def __init__(self, max_bytes: int, max_messages: int = MAX_MESSAGES) -> None:
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        # Each device's own queue, and the devices with something queued in the order of their
        # next turn.
        self._priority: dict[str, deque[Item]] = {}
        self._turns: deque[str] = deque()
        self._waiting = 0  # messages in the priority lane
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
            return self._waiting + len(self._junk)

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
            while self._waiting and (
                self._waiting >= self.max_messages
                or self._bytes["priority"] + self._bytes["junk"] + size > self.max_bytes
            ):
                if stop.is_set():
                    return False
                self._cond.wait(timeout)
            queue = self._priority.get(item.device)
            if queue is None:
                queue = self._priority[item.device] = deque()
                self._turns.append(item.device)
            queue.append(item)
            self._waiting += 1
            self._bytes["priority"] += size
            self._cond.notify_all()
            return True

    def get(self, timeout: float) -> Item | None:
        """The next message, priority first (the next device's turn); None when none came
        within `timeout`."""
        with self._cond:
            if not (self._waiting or self._junk):
                self._cond.wait(timeout)
            if self._waiting:
                device = self._turns.popleft()
                queue = self._priority[device]
                item = queue.popleft()
                if queue:
                    self._turns.append(device)
                else:
                    del self._priority[device]
                self._waiting -= 1
                self._bytes["priority"] -= len(item.payload)
            elif self._junk:
                item = self._junk.popleft()
                self._bytes["junk"] -= len(item.payload)
            else:
                return None
            self._cond.notify_all()
            return item
