"""Judging: the second step on a reading's way, between the sensor that took it and the commit
buffer that makes it durable.

Every reading a sensor task takes is judged at once by the running module chain (its score and
flags, `gateway.modules.chain`). The modules change while the gateway runs (a SIGHUP reload, a
model update); `ModuleSwitch` changes them so that every batch names the modules that judged its
records.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

from gateway.core.reading import Reading
from gateway.device.commit import CommitBuffer
from gateway.device.seal import ModuleEntry
from gateway.device.spool_service import SpoolService
from gateway.modules.chain import ModuleChain

log = logging.getLogger("gateway")

#: batches a module change may seal beyond `seal_ahead` (it seals every reading judged so far);
#: past that the backlog is large, the broker far behind, and the change is refused
SWITCH_SLACK_BATCHES = 4


class Judge:
    """The running module chain, and the module list the batches sealed from now on name."""

    def __init__(self, chain: ModuleChain) -> None:
        self.chain = chain
        # What batches sealed from now on name (key 8). Changed only on the spool's thread,
        # right after the commit that sealed the readings the previous modules judged.
        self._entries = chain.batch_entries()

    def judge(self, readings: Sequence[Reading]) -> None:
        self.chain.judge(readings)

    def entries(self) -> list[ModuleEntry]:
        """The module list of the batch being sealed (the spool's thread asks)."""
        return self._entries

    def name(self, entries: list[ModuleEntry]) -> None:
        """Batches sealed from now on name `entries`."""
        self._entries = entries


class ModuleSwitch:
    """Changes the modules between two readings: the readings judged so far are sealed under
    the module list that judged them, in the same step, and later batches name the new list.
    One change at a time (`changing`): a reload and a model update never interleave."""

    def __init__(
        self, judge: Judge, *, spool: SpoolService, commits: CommitBuffer, batch_max_readings: int
    ) -> None:
        self.judge = judge
        self.spool = spool
        self.commits = commits
        self.batch_max_readings = batch_max_readings
        self.changing = asyncio.Lock()

    async def use(self, chain: ModuleChain) -> bool:
        """Judge with `chain` from the next reading on; False when refused (see `__call__`)."""
        judge, previous = self.judge, self.judge.chain

        def apply() -> None:
            judge.chain = chain

        def undo() -> None:
            judge.chain = previous

        return await self(apply, undo)

    async def __call__(self, apply: Callable[[], None], undo: Callable[[], None]) -> bool:
        """Change the modules (`apply`, synchronous) so that every batch names the modules that
        judged its records: the readings judged so far are sealed under the old list in the
        same step, on the spool's thread, and later batches name the new one.

        Refused (False, nothing changed) when the spool cannot seal all of them now: with the
        broker behind, sealing is held back (`seal_ahead`), or not started yet (the chain head),
        and readings left pending would be sealed later under the wrong list. If the sealing
        commit fails, `undo` puts the old modules back."""
        spool = self.spool.spool
        if spool.held:
            log.warning(
                "module change refused: nothing is sealed before the chain head on the broker "
                "was read, so the readings judged so far could not be sealed under the modules "
                "that judged them; try again once the broker was reached"
            )
            return False
        st = await self.spool.call(spool.stats)
        bmr = self.batch_max_readings
        room = max(0, spool.seal_ahead - st.sealed) + SWITCH_SLACK_BATCHES
        waiting = st.pending + self.commits.buffered
        if waiting > room * bmr:
            log.warning(
                "module change refused: %d readings wait for sealing, %d sealed batches for "
                "the broker; try again once it has caught up",
                waiting,
                st.sealed,
            )
            return False
        judge = self.judge
        old = judge.chain.batch_entries()
        apply()  # no await from here to the commit taking the buffer: nothing judged between
        new = judge.chain.batch_entries()
        try:
            await self.commits.commit(seal_all=True, then=lambda: judge.name(new))
        except Exception:
            undo()
            judge.name(old)
            raise
        return True
