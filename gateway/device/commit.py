"""The commit buffer: judged readings grouped in memory and made durable together (group commit).

The step between judging and the spool: readings are grouped in memory and committed together
every `commit_interval`, so an SD card is written once per group, not once per reading. Two
things commit sooner:

- A full batch waiting in memory. Only the whole batches go, sealed in that commit; the rest
  stays in memory for the next commit, so a fast sensor fills every batch. The rest never waits
  longer than it would have: the interval keeps running from the last commit that took the
  whole group.
- The broker acknowledging batches while the spool holds readings back because its sealed-ahead
  window is full (a backlog, after an outage). The commit that forgets those batches seals the
  next ones, so a backlog drains at the broker's pace instead of one window per interval.

A reading counts as read only after the commit holding it returned; `health.readings` counts it
then. The batches a commit sealed go to the outbox (the uplink) from here, and the broker's
acknowledgements come back here: they are deleted from the spool in a later commit.

A commit the disk refuses for want of space changes nothing in the spool: its readings go back
to the front of the buffer, acknowledgements stay to be recorded, and the commit is tried again,
backing off, until the disk takes it. Meanwhile the buffer holds at most HELD_MAX readings; past
that the oldest go, and a signed receipt (`disk-full`) says how many of which period.
Sealed batches keep being published meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from typing import Protocol

from gateway.core.errors import SpoolError
from gateway.core.health import Health
from gateway.core.reading import Reading
from gateway.device.disk_full import DiskFull
from gateway.device.seal import SealedBatch
from gateway.device.service import Plain
from gateway.device.spool import CommitResult, PendingRecord, Spool
from gateway.device.spool_service import Refusals
from gateway.wire import payloads

# The name it had before the commit buffer had its own: what owners filter their logs by.
log = logging.getLogger("gateway.pipeline")

#: readings held in memory at most while the disk refuses them (some 20 MB; 17 hours of 8
#: quantities every 10 s). Past it the oldest are given up, with a signed receipt.
HELD_MAX = 50_000
DROP_WHY_DISK_FULL = "disk-full"


class Outbox(Protocol):
    """Where sealed batches go once they are durable (the uplink)."""

    def offer(self, batch: SealedBatch) -> None: ...


class CommitBuffer(Plain):
    """Makes judged readings durable: commits them to the spool in groups, which seals the
    batches that are due, and hands each sealed batch to the outbox. The outbox may be
    connected after construction (the uplink, which reports its acknowledgements here, is
    built with this buffer's methods)."""

    def __init__(
        self,
        spool: Spool,
        *,
        executor: Executor,
        health: Health,
        commit_interval: float,
        batch_max_readings: int,
        clock_source: Callable[[], str],
        outbox: Outbox | None = None,
        refusals: Refusals | None = None,
    ) -> None:
        self.spool = spool
        self.executor = executor
        self.health = health
        self.commit_interval = commit_interval
        self.batch_max_readings = batch_max_readings
        self.outbox = outbox
        self.clock_source = clock_source
        self._buffer: list[PendingRecord] = []
        self._names: list[Reading] = []
        self._acked: set[int] = set()
        self._wake = asyncio.Event()
        self._debug = log.isEnabledFor(logging.DEBUG)
        # Loop time at which the whole buffer last went to a commit. The next commit taking
        # everything is due one commit_interval later, whatever commits took whole batches in
        # between: a reading waits in memory at most commit_interval, as the spool's horizon
        # (the time to the next commit) assumes.
        self._flushed_at = 0.0
        # Whether the spool holds pending rows back because the sealed-ahead window is full.
        # Unknown until run() or a commit asks the spool: assume so, so that an early
        # acknowledgement of a backlog is not missed.
        self._held_back = True
        # Spool thread only: no pending rows were left by the last commit (lets that thread
        # skip asking the spool when a commit sealed everything it was given).
        self._spool_clear = False
        self.refusals = refusals or Refusals(health)
        # Loop time of the next try after a commit the disk refused; None while commits pass.
        self._retry_at: float | None = None
        # Receipts for readings given up in memory, for the next commit that goes through.
        self._dropped: list[payloads.DropReceipt] = []

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
        if len(buf) > HELD_MAX:
            self._give_up(len(buf) - HELD_MAX)
        if self.commit_interval <= 0 or len(buf) >= self.batch_max_readings:
            self._wake.set()

    def _give_up(self, n: int) -> None:
        """Drop the `n` oldest readings in memory (the disk has refused them for long), into
        one receipt with those dropped before it since the last commit that went through."""
        gone, self._buffer[:n] = self._buffer[:n], []
        if self._debug:
            del self._names[:n]
        t_from, t_to = min(r.t for r in gone), max(r.t for r in gone)
        if self._dropped:
            last = self._dropped.pop()
            n, t_from, t_to = last.n + n, min(last.t_from, t_from), max(last.t_to, t_to)
        else:
            log.error(
                "disk full for long: %d readings held in memory, the oldest are given up "
                "(a signed receipt says how many)",
                HELD_MAX,
            )
        self._dropped.append(payloads.DropReceipt(n, t_from, t_to, DROP_WHY_DISK_FULL))
        self.health.readings_dropped += len(gone)

    def acked(self, seq: int, n: int) -> None:
        """The broker acknowledged batch `seq`; it is deleted at the next commit, at once when
        deleting it makes room for readings the spool holds back."""
        self._acked.add(seq)
        self.health.batches_acked += 1
        self.health.readings_acked += n
        if self._held_back:
            self._wake.set()

    async def backlog(self) -> list[SealedBatch]:
        """The sealed batches the broker has not acknowledged, oldest first, as the uplink sends
        them again after a connect (acknowledged ones wait for their deletion here)."""
        skip = set(self._acked)
        loop = asyncio.get_running_loop()
        batches = await loop.run_in_executor(self.executor, self.spool.unacked)
        return [b for b in batches if b.seq not in skip]

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
        """Make the whole buffer durable. `then` runs on the spool's thread right after this
        commit and before any later one: what it changes (the module list batches name) applies
        to the batches sealed after this commit only.

        A commit the disk refuses for want of space returns an empty result, its readings kept
        in memory for the next try; with `then`, which did not run, it raises DiskFull."""
        return await self._commit(
            len(self._buffer), force_seal=force_seal, seal_all=seal_all, then=then
        )

    async def _commit(
        self,
        take: int,
        *,
        force_seal: bool = False,
        seal_all: bool = False,
        then: Callable[[], None] | None = None,
    ) -> CommitResult:
        """Commit the first `take` readings of the buffer (all of it when `take` reaches its
        length); the rest stays in memory, in order."""
        loop = asyncio.get_running_loop()
        flushed_before = self._flushed_at
        if take >= len(self._buffer):
            batch, self._buffer = self._buffer, []
            names, self._names = self._names, []
            self._flushed_at = loop.time()
        else:
            batch, self._buffer = self._buffer[:take], self._buffer[take:]
            names, self._names = self._names[:take], self._names[take:]
        acked = set(self._acked)
        dropped, self._dropped = self._dropped, []
        horizon = self.commit_interval

        def job() -> tuple[CommitResult, bool]:
            result = self.spool.commit(
                batch,
                acked,
                now=time.time(),
                force_seal=force_seal,
                horizon=horizon,
                seal_all=seal_all,
                dropped=dropped,
            )
            held = self._spool_holds_back(sum(n for _, _, n in result.sealed), len(batch))
            if then is not None:  # only after a commit that happened: nothing switches otherwise
                then()
            return result, held

        def restore() -> None:
            """Nothing was stored: keep the readings for the next attempt, in order, and the
            deadline they had."""
            self._buffer[:0] = batch
            self._names[:0] = names
            self._dropped[:0] = dropped
            self._flushed_at = flushed_before
            if len(self._buffer) > HELD_MAX:
                self._give_up(len(self._buffer) - HELD_MAX)

        fut = loop.run_in_executor(self.executor, job)
        try:
            result, held = await asyncio.shield(fut)
        except asyncio.CancelledError:
            # The commit goes on in the spool's thread whatever happens here: wait for it and
            # account for what it stored, or the same readings would be stored twice and its
            # sealed batches never offered. Then stop as asked.
            try:
                result, held = await fut
            except DiskFull as e:
                restore()
                self._refused(e)
            except Exception:
                restore()
                raise
            else:
                self._after(result, held, acked, names)
            raise
        except DiskFull as e:
            restore()
            self._refused(e)
            if then is not None:
                raise
            return CommitResult()
        except BaseException:
            restore()
            raise
        self._after(result, held, acked, names)
        return result

    def _refused(self, e: DiskFull, held: str = "") -> None:
        held = held or f"{len(self._buffer)} readings held in memory"
        delay = self.refusals.refused(e, held=held)
        self._retry_at = asyncio.get_running_loop().time() + delay

    def _spool_holds_back(self, sealed: int | None = None, handed: int = 0) -> bool:
        """On the spool's thread: whether pending rows wait for room in the sealed-ahead window.
        Free right after a commit that sealed all it was given (`sealed` readings of `handed`)
        when nothing was pending before; otherwise the spool's counts say."""
        if sealed is not None and self._spool_clear and sealed == handed:
            return False
        try:
            st = self.spool.stats()
        except (sqlite3.Error, SpoolError):
            # Only a hint for when to commit next, and a commit that happened must not look
            # failed. "Held back" costs at most a commit per acknowledgement.
            self._spool_clear = False
            return True
        self._spool_clear = st.pending == 0
        return st.pending > 0 and st.sealed >= self.spool.seal_ahead

    def _after(
        self, result: CommitResult, held: bool, acked: set[int], names: list[Reading]
    ) -> None:
        self._acked -= acked
        self._held_back = held
        if self.spool.refused is not None:
            # Stored, but the chain record was refused: the batches sealed wait for it.
            self._refused(self.spool.refused, "sealed batches wait for it to be written")
        else:
            self._retry_at = None
            self.refusals.stored(f"{result.durable} readings held in memory are stored")
        if held and self._acked:
            # Acknowledged while this commit ran, before it knew the spool was holding back.
            self._wake.set()
        h = self.health
        h.readings += result.durable
        h.readings_dropped += result.dropped
        if result.dropped:
            log.warning("spool full: dropped the %d oldest unsent readings", result.dropped)
        if self._debug:
            for r in names:
                log.debug("durable %s t=%r v=%r", r.name, r.t, r.value)
        if not result.sealed:
            return
        if self.outbox is None:
            raise RuntimeError("batches were sealed before the commit buffer had an outbox")
        offer = self.outbox.offer
        for b in result.sealed:
            h.batches_sealed += 1
            offer(b)

    async def run(self) -> None:
        """Commit every interval; whole batches as soon as one is waiting; and at once when an
        acknowledgement makes room for readings the spool holds back."""
        loop = asyncio.get_running_loop()
        interval = self.commit_interval
        bmr = self.batch_max_readings
        self._flushed_at = loop.time()
        self._held_back = await loop.run_in_executor(self.executor, self._spool_holds_back)
        # A spool opened with readings it can seal now (fewer batches sealed than the window
        # holds) seals them at once, not an interval later: no acknowledgement would wake it.
        if self.spool.due(time.time(), interval):
            await self.commit()
        while True:
            if self._retry_at is not None:
                # The disk refused the last commit: try again when its back-off says, with
                # all there is (acknowledgements too), whatever woke us meanwhile.
                await asyncio.sleep(max(0.0, self._retry_at - loop.time()))
                self._wake.clear()
                await self.commit()
                continue
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
            # arrives as the event is set, and the daemon's shutdown would wait forever.
            if interval > 0:
                delay = self._flushed_at + interval - loop.time()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await self._wake.wait()
            else:
                await self._wake.wait()
            self._wake.clear()
            if interval <= 0 or loop.time() >= self._flushed_at + interval:
                # The interval ran out: everything in memory goes, a partial batch too (the
                # spool seals it if its oldest reading would pass batch_max_age before the next
                # commit).
                if self._buffer or self._acked or self.spool.due(time.time(), interval):
                    await self.commit()
                else:
                    self._flushed_at = loop.time()
                continue
            # Early: only whole batches (a partial one would be sealed short, or written twice
            # as pending rows) and, with a backlog held back, the acknowledgements that make
            # room for it.
            whole = len(self._buffer) // bmr * bmr
            if whole or (self._acked and self._held_back):
                await self._commit(whole)
