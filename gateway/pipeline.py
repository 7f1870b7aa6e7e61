"""Between the sampler and the uplink: the in-memory group of readings and its commits.

Readings are grouped in memory and committed together every `commit_interval` (or as soon as a
full batch is waiting), so an SD card is written once per group, not once per reading. A reading
counts as read only after the commit holding it returned; `on_durable` hears of it then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from gateway import payloads
from gateway.health import Health
from gateway.reading import Reading
from gateway.spool import CommitResult, PendingRecord, Spool

log = logging.getLogger("gateway.pipeline")


class Pipeline:
    def __init__(
        self,
        spool: Spool,
        *,
        executor: ThreadPoolExecutor,
        health: Health,
        commit_interval: float,
        batch_max_readings: int,
        on_sealed: Callable[[int, bytes, int], None],
        clock_source: Callable[[], str],
    ) -> None:
        self.spool = spool
        self.executor = executor
        self.health = health
        self.commit_interval = commit_interval
        self.batch_max_readings = batch_max_readings
        self.on_sealed = on_sealed
        self.clock_source = clock_source
        self._buffer: list[PendingRecord] = []
        self._names: list[Reading] = []
        self._acked: set[int] = set()
        self._acked_n = 0
        self._wake = asyncio.Event()
        self._debug = log.isEnabledFor(logging.DEBUG)

    def accept(self, readings: Sequence[Reading]) -> None:
        """Take judged readings; they become durable at the next commit."""
        source = self.clock_source()
        enc = payloads.encode_record
        buf = self._buffer
        for r in readings:
            rec = enc(r.name, r.unit, r.value, r.t, r.score, r.flags)
            buf.append(PendingRecord(r.t, r.synced, source if r.synced else "none", rec))
        if self._debug:
            self._names.extend(readings)
        if self.commit_interval <= 0 or len(buf) >= self.batch_max_readings:
            self._wake.set()

    def acked(self, seq: int, n: int) -> None:
        """The broker acknowledged batch `seq`; it is deleted at the next commit."""
        self._acked.add(seq)
        self.health.batches_acked += 1
        self.health.readings_acked += n

    def unacked_pending_delete(self) -> set[int]:
        return set(self._acked)

    @property
    def buffered(self) -> int:
        """Readings accepted but not yet handed to the spool."""
        return len(self._buffer)

    async def commit(
        self,
        *,
        force_seal: bool = False,
        seal_all: bool = False,
        then: Callable[[], None] | None = None,
    ) -> CommitResult:
        """Make the buffer durable. `then` runs on the spool's thread right after this commit
        and before any later one: what it changes (the module list batches name) applies to
        the batches sealed after this commit only."""
        batch, self._buffer = self._buffer, []
        names, self._names = self._names, []
        acked = set(self._acked)
        horizon = self.commit_interval

        def job() -> CommitResult:
            result = self.spool.commit(
                batch,
                acked,
                now=time.time(),
                force_seal=force_seal,
                horizon=horizon,
                seal_all=seal_all,
            )
            if then is not None:  # only after a commit that happened: nothing switches otherwise
                then()
            return result

        fut = asyncio.get_running_loop().run_in_executor(self.executor, job)
        try:
            result = await asyncio.shield(fut)
        except asyncio.CancelledError:
            # The commit goes on in the spool's thread whatever happens here: wait for it and
            # account for what it stored, or the same readings would be stored twice and its
            # sealed batches never offered. Then stop as asked.
            try:
                result = await fut
            except Exception:
                self._restore(batch, names)
                raise
            self._after(result, acked, names)
            raise
        except BaseException:
            self._restore(batch, names)
            raise
        self._after(result, acked, names)
        return result

    def _restore(self, batch: list[PendingRecord], names: list[Reading]) -> None:
        """Nothing was stored: keep the readings for the next attempt, in order."""
        self._buffer[:0] = batch
        self._names[:0] = names

    def _after(self, result: CommitResult, acked: set[int], names: list[Reading]) -> None:
        self._acked -= acked
        h = self.health
        h.readings += result.durable
        h.readings_dropped += result.dropped
        if result.dropped:
            log.warning("spool full: dropped the %d oldest unsent readings", result.dropped)
        if self._debug:
            for r in names:
                log.debug("durable %s t=%r v=%r", r.name, r.t, r.value)
        for seq, message, n in result.sealed:
            h.batches_sealed += 1
            self.on_sealed(seq, message, n)

    async def run(self) -> None:
        """Commit on the interval, or early when a full batch is waiting."""
        while True:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # arrives as the event is set, and the daemon's shutdown would wait forever.
            if self.commit_interval > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.commit_interval):
                        await self._wake.wait()
            else:
                await self._wake.wait()
            self._wake.clear()
            if self._buffer or self._acked or self.spool.due(time.time(), self.commit_interval):
                await self.commit()
