"""The spool as the daemon runs it: on its own thread, opened first and closed last.

Every SQLite call (opening it included) runs on the spool's one thread, so the event loop never
waits for the card, and the commits keep their order. Once a second the spool's figures go to
health: how many readings wait for the broker, since when, and where the chain stands.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Self, TypeVar

from gateway.config.settings import Config
from gateway.core.health import Health
from gateway.device.seal import ModuleEntry
from gateway.device.spool import Spool, SpoolStats
from gateway.wire.identity import Identity

log = logging.getLogger("gateway")
T = TypeVar("T")

#: batches sealed ahead of the uplink, per batch it may have in flight
SEAL_AHEAD_PER_INFLIGHT = 2


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

    async def call(self, fn: Callable[[], T]) -> T:
        """Run a spool call on the spool's own thread: SQLite I/O never blocks the loop."""
        return await asyncio.get_running_loop().run_in_executor(self.thread, fn)

    async def __aenter__(self) -> Self:
        try:
            st = await self.call(self._open)
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
