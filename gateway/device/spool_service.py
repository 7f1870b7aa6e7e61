"""The spool as the daemon runs it: on its own thread, opened first and closed last.

Every SQLite call (opening it included) runs on the spool's one thread, so the event loop never
waits for the card, and the commits keep their order. Once a second the spool's figures go to
health: how many readings wait for the broker, since when, and where the chain stands.

A full disk stops nothing: a spool that cannot be opened for want of space is tried again
(backing off, saying why once, and telling systemd) until it can, instead of the process
exiting and being restarted into the same full disk; writes refused later are the commit
buffer's to hold and retry. `Refusals` keeps the account of both for health and the log.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Self, TypeVar

from gateway.config.settings import Config
from gateway.core.health import Health
from gateway.device.disk_full import DiskFull
from gateway.device.seal import ModuleEntry
from gateway.device.spool import Spool, SpoolStats
from gateway.monitor import sdnotify
from gateway.wire.identity import Identity

log = logging.getLogger("gateway")
T = TypeVar("T")

#: batches sealed ahead of the uplink, per batch it may have in flight
SEAL_AHEAD_PER_INFLIGHT = 2
#: after a write refused for want of space: the first wait before trying again, doubled at each
#: refusal up to the last
RETRY_FIRST = 1.0
RETRY_MAX = 10.0
#: a disk that stays full is said again this often (and whenever the file refused changes)
SAY_AGAIN = 600.0


class Refusals:
    """The spool's writes refused for want of space: health's `disk_full` and `writes_refused`,
    one log line when it starts (again when the refused file changes, and every SAY_AGAIN while
    it lasts), one when a write succeeds again, and how long to wait before the next try."""

    def __init__(self, health: Health) -> None:
        self.health = health
        self.path: Path | None = None  # the file last refused; None while writes succeed
        self.count = 0  # writes refused since the disk last took one
        self.delay = 0.0
        self._since = 0.0
        self._said = -math.inf

    @property
    def full(self) -> bool:
        return self.path is not None

    def refused(self, e: DiskFull, *, held: str) -> float:
        """Count the refused write `e`; `held` says what waits meanwhile. Returns the seconds
        to wait before trying again."""
        now = time.monotonic()
        h = self.health
        h.disk_full = True
        h.writes_refused += 1
        if self.path is None:
            self._since = now
        changed, self.path = e.path != self.path, e.path
        self.count += 1
        self.delay = min(RETRY_MAX, max(RETRY_FIRST, self.delay * 2))
        if changed or now - self._said >= SAY_AGAIN:
            self._said = now
            log.error(
                "disk full: %s, %d write%s refused; %s (%s); trying again every %.0f s at most",
                e.path,
                self.count,
                "" if self.count == 1 else "s",
                held,
                e.cause,
                RETRY_MAX,
            )
            h.last_error = f"disk full: {e.path}"
        return self.delay

    def stored(self, what: str) -> None:
        """A write went through: the disk has room again."""
        if self.path is None:
            return
        log.warning(
            "disk full no more: %s written again after %d refused writes in %.0f s; %s",
            self.path,
            self.count,
            time.monotonic() - self._since,
            what,
        )
        self.health.disk_full = False
        self.path, self.count, self.delay, self._said = None, 0, 0.0, -math.inf


class SpoolThread(ThreadPoolExecutor):
    """The spool's one thread; it tells since when its current job has been running."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="spool")
        self.busy_since: float | None = None

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        def timed() -> T:
            self.busy_since = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                self.busy_since = None

        return super().submit(timed)


class SpoolService:
    """Where judged readings are kept until the broker has them: opens the spool (on its
    thread) before anything runs, keeps health's queue figures current, closes it at the end."""

    def __init__(
        self,
        cfg: Config,
        *,
        identity: Identity,
        boot: bytes,
        modules: Callable[[], Sequence[ModuleEntry]],
        health: Health,
    ) -> None:
        u = cfg.uplink
        self.spool = Spool(
            cfg.spool.path,
            identity=identity,
            boot=boot,
            max_size=cfg.spool.max_size,
            batch_max_readings=u.batch_max_readings,
            batch_max_age=u.batch_max_age,
            seal_ahead=u.max_inflight * SEAL_AHEAD_PER_INFLIGHT,
            modules=modules,
            key_file=cfg.device.key_file,
        )
        # Nothing is sealed before the chain head the broker keeps was read (head.py).
        self.spool.held = True
        self.health = health
        self.did = identity.did
        self.thread = SpoolThread()
        self.refusals = Refusals(health)

    async def call(self, fn: Callable[[], T]) -> T:
        """Run a spool call on the spool's own thread: SQLite I/O never blocks the loop."""
        return await asyncio.get_running_loop().run_in_executor(self.thread, fn)

    async def patiently(self, fn: Callable[[], T], *, waiting: str) -> T:
        """`call`, waiting for room (and trying again) for as long as the disk is full: for the
        few writes that cannot be put off and have nothing to hold in memory meanwhile (opening
        the spool; taking the chain up after the head the broker keeps). `waiting` says what
        waits."""
        while True:
            try:
                result = await self.call(fn)
            except DiskFull as e:
                delay = self.refusals.refused(e, held=waiting)
                fields = [
                    f"STATUS=disk full: {e.path}; {waiting}",
                    # Type=notify: a start that waits for space is not a start that hangs.
                    f"EXTEND_TIMEOUT_USEC={int((delay + RETRY_MAX) * 1e6)}",
                ]
                if sdnotify.watchdog_interval():
                    fields.append("WATCHDOG=1")
                sdnotify.notify(*fields)
                await asyncio.sleep(delay)
                continue
            self.refusals.stored("going on")
            return result

    async def __aenter__(self) -> Self:
        try:
            st = await self.patiently(
                self._open, waiting="the gateway waits for space to open its spool"
            )
        except BaseException:
            await self._close()
            raise
        log.info(
            "device %s; spool %s: %d pending readings, %d sealed batches awaiting the broker, "
            "next seq %d",
            self.did,
            self.spool.path,
            st.pending,
            st.sealed,
            st.next_seq,
        )
        return self

    def _open(self) -> SpoolStats:
        self.spool.open()
        return self.spool.stats()

    async def __aexit__(self, *exc_info: object) -> None:
        await self._close()

    async def _close(self) -> None:
        try:
            await self.call(self.spool.close)
        finally:
            self.thread.shutdown(wait=True)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            await self.read_depth()

    async def read_depth(self) -> None:
        """Health's figures of the queue and the chain, as the spool has them now."""
        st = await self.call(self.spool.stats)
        h = self.health
        h.queue_depth = st.pending + st.sealed_readings
        h.last_seq = st.next_seq - 1 if st.next_seq > 0 else None
        olds = [t for t in (st.oldest_pending, st.oldest_sealed) if t is not None]
        h.oldest_unsent = min(olds) if olds else None
