"""The dashboard's intake: signed births and batches judged on one worker thread.

Verifying a signed message costs time in proportion to its size (a 1 MB batch of 23,000
records, about 0.3 s), and anyone with publish rights can sign new batches with keys of their
own. Done in the event loop, a few of those a second would stall the page. So the event loop
does only the cheap checks (`Fleet.place`: size, topic, replayed bytes) and the unsigned
messages; births and batches wait in an inbox for the worker thread, which judges them
(`model.judge`: strict decoding, the verifier, choosing the readings to plot) and hands each
verdict back to the event loop, which takes it into the model (`Fleet.apply`). The model is
only ever touched in the event loop, so the HTTP handlers never see it half changed.

The inbox has two lanes, each bounded in bytes and in messages. Messages on the topics of a
gateway already shown and signed by its own key (`own_key`: the envelope's signature, checked
here, not the payload) go into the priority lane, which the worker always empties first, the
gateways taking turns there (one message of each per round, at most `PER_DEVICE` of one waiting);
everything else (gateways not shown yet, other keys) goes into the stranger lane. A
lane that is full drops the message that arrives (the newest), counted in the page's intake as
"<kind>: dropped, dashboard busy"; an empty lane always takes one message, however large. The
worker judges one message at a time and waits for the event loop to take its verdict before the
next, so decoded batches never pile up in memory.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass

from gateway.dashboard.model import Fleet, Verdict, judge
from gateway.wire import cose
from gateway.wire.identity import device_id_of, did_of

log = logging.getLogger("gateway.dashboard")

MIB = 1024 * 1024
#: bytes and messages the stranger lane may hold (gateways not shown yet): the retained births
#: of a whole fleet (MAX_DEVICES) arrive at once when the dashboard subscribes
STRANGER_BYTES = 32 * MIB
STRANGER_MESSAGES = 4096
#: bytes and messages the priority lane may hold (gateways shown), and messages of one gateway
PRIORITY_BYTES = 16 * MIB
PRIORITY_MESSAGES = 1024
PER_DEVICE = 8
#: the kinds judged on the worker thread; attestations (4 KiB at most) are judged in place
JUDGED = frozenset({"birth", "batch"})


@dataclass(frozen=True)
class Job:
    """A birth or batch that passed the cheap checks, as it arrived."""

    device_id: str
    kind: str
    payload: bytes
    now: float
    retained: bool


class Inbox:
    """The two lanes. Thread-safe: the event loop puts, the worker gets."""

    def __init__(
        self,
        *,
        stranger_bytes: int = STRANGER_BYTES,
        stranger_messages: int = STRANGER_MESSAGES,
        priority_bytes: int = PRIORITY_BYTES,
        priority_messages: int = PRIORITY_MESSAGES,
        per_device: int = PER_DEVICE,
    ) -> None:
        self.limits = {
            "stranger": (stranger_bytes, stranger_messages),
            "priority": (priority_bytes, priority_messages),
        }
        self.per_device = per_device
        self._strangers: deque[Job] = deque()
        self._priority: dict[str, deque[Job]] = {}  # each gateway's own queue
        self._turns: deque[str] = deque()  # the gateways with a message waiting, in turn
        self._count = {"stranger": 0, "priority": 0}
        self._bytes = {"stranger": 0, "priority": 0}
        self._cond = threading.Condition()

    def __len__(self) -> int:
        with self._cond:
            return self._count["stranger"] + self._count["priority"]

    def put(self, job: Job, *, priority: bool) -> bool:
        """Queue `job`; False (nothing queued) when its lane is full."""
        lane = "priority" if priority else "stranger"
        max_bytes, max_messages = self.limits[lane]
        size = len(job.payload)
        with self._cond:
            own = self._priority.get(job.device_id) if priority else None
            if self._count[lane] and (
                self._count[lane] >= max_messages
                or self._bytes[lane] + size > max_bytes
                or (own is not None and len(own) >= self.per_device)
            ):
                return False
            if not priority:
                self._strangers.append(job)
            elif own is None:
                self._priority[job.device_id] = deque([job])
                self._turns.append(job.device_id)
            else:
                own.append(job)
            self._count[lane] += 1
            self._bytes[lane] += size
            self._cond.notify()
            return True

    def get(self, timeout: float) -> Job | None:
        """The next job, the priority lane's first (the next gateway's turn); None when none
        came within `timeout`."""
        with self._cond:
            if not (self._count["stranger"] or self._count["priority"]):
                self._cond.wait(timeout)
            if self._count["priority"]:
                lane = "priority"
                device = self._turns.popleft()
                own = self._priority[device]
                job = own.popleft()
                if own:
                    self._turns.append(device)
                else:
                    del self._priority[device]
            elif self._count["stranger"]:
                lane = "stranger"
                job = self._strangers.popleft()
            else:
                return None
            self._count[lane] -= 1
            self._bytes[lane] -= len(job.payload)
            return job


def own_key(device_id: str, message: bytes) -> bool:
    """Whether `message` is a COSE_Sign1 whose signature by `device_id`'s key verifies: the
    envelope alone (its payload stays bytes) and one signature, about a millisecond a
    megabyte, so a stranger cannot take a shown gateway's places in the priority lane."""
    try:
        return device_id_of(did_of(cose.verify1(message).public_key)) == device_id
    except Exception:  # anything not provably the device's is a stranger's
        return False


class Intake:
    """Feeds the fleet model from the event loop, births and batches judged by one worker
    thread. `submit` is called in the loop `loop`; start() before, close() after."""

    def __init__(
        self, fleet: Fleet, loop: asyncio.AbstractEventLoop, inbox: Inbox | None = None
    ) -> None:
        self.fleet = fleet
        self.loop = loop
        self.inbox = inbox if inbox is not None else Inbox()
        self._stop = threading.Event()
        # One verdict handed to the loop at a time: a decoded batch is several times its bytes.
        self._handed = threading.Semaphore(1)
        self._thread = threading.Thread(target=self._run, name="dashboard-judge", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._handed.release()  # a worker waiting for the loop that no longer runs
        self._thread.join(timeout)

    def submit(self, topic: str, payload: bytes, *, retained: bool = False) -> None:
        """Take one message: the cheap checks now, a birth or batch queued for the worker (or
        dropped and counted when its lane is full), anything else into the model now."""
        now = time.time()
        placed = self.fleet.place(topic, payload)
        if placed is None:
            return
        device_id, kind = placed
        if kind not in JUDGED or not payload:
            self.fleet.apply(device_id, kind, payload, now, retained=retained)
            return
        job = Job(device_id, kind, payload, now, retained)
        shown = device_id in self.fleet.devices and own_key(device_id, payload)
        if not self.inbox.put(job, priority=shown):
            self.fleet.refused[f"{kind}: dropped, dashboard busy"] += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            job = self.inbox.get(timeout=0.5)
            if job is None:
                continue
            try:
                verdict = judge(self.fleet.prefix, job.device_id, job.kind, job.payload)
            except Exception:  # a bug on one message must not stop the worker
                log.exception("cannot judge the %s of %s", job.kind, job.device_id)
                continue
            while not self._handed.acquire(timeout=0.5):
                if self._stop.is_set():
                    return
            if self._stop.is_set():
                return
            try:
                self.loop.call_soon_threadsafe(self._take, job, verdict)
            except RuntimeError:  # the loop is closed: the dashboard is ending
                return

    def _take(self, job: Job, verdict: Verdict) -> None:
        try:
            self.fleet.apply(
                job.device_id, job.kind, job.payload, job.now, retained=job.retained,
                verdict=verdict,
            )  # fmt: skip
        except Exception:  # a bug on one message must not stop the dashboard
            log.exception("cannot take the %s of %s", job.kind, job.device_id)
        finally:
            self._handed.release()
