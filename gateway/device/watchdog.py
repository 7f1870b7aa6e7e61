"""systemd's watch over the reading's way: READY once the gateway really does its job, a
WATCHDOG ping while nothing on the way is stuck, and a STATUS= line saying how it goes."""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.core.health import Health
from gateway.device.sampler import Sampler
from gateway.device.service import Plain
from gateway.device.spool_service import SpoolThread
from gateway.monitor import sdnotify

log = logging.getLogger("gateway")

#: a spool job (a commit: SQLite, fsync) running longer than this means a failing card or a
#: hung filesystem: the watchdog stops pinging and systemd restarts the gateway
WRITER_STALL = 20.0


def status_line(health: Health) -> str:
    h = health
    broker = "broker connected" if h.connected else "broker away"
    seq = "-" if h.last_seq is None else h.last_seq
    line = f"{h.readings} readings, {h.queue_depth} queued, {broker}, last seq {seq}"
    if h.disk_full:
        line += f"; DISK FULL: {h.writes_refused} writes refused, readings held in memory"
    return line


class Watchdog(Plain):
    """Pings while every sensor task comes round in time and no spool job hangs."""

    def __init__(self, *, sampler: Sampler, spool_thread: SpoolThread, health: Health) -> None:
        self.sampler = sampler
        self.spool_thread = spool_thread
        self.health = health

    def stuck(self) -> list[str]:
        """What is stuck right now (empty: healthy): a sensor task that did not come round in
        time (a hung driver), or one spool job running for longer than WRITER_STALL (a stuck
        writer; jobs merely queued behind a slow one do not count)."""
        now = asyncio.get_running_loop().time()
        stuck = [f"sensor {s.cfg.id}" for s in self.sampler.sensors if now > s.due_by]
        busy = self.spool_thread.busy_since
        if busy is not None and time.monotonic() - busy > WRITER_STALL:
            stuck.append("spool writer")
        return stuck

    async def run(self) -> None:
        # READY once the spool is open (the gateway opened it before anything runs), the
        # uplink runs, and every sensor has had its first read, good or failed: the unit is
        # then really doing its job. Told the moment the last of them is read, not at the next
        # tick of a polling loop.
        await asyncio.gather(*(s.first_read.wait() for s in self.sampler.sensors))
        sdnotify.notify("READY=1", f"STATUS={status_line(self.health)}")
        watchdog = sdnotify.watchdog_interval()
        period = watchdog / 2 if watchdog else 10.0
        was_stuck: list[str] = []
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            # A fixed cadence: a ping every `period`, however long the checks take.
            due += period
            await asyncio.sleep(max(0.0, due - loop.time()))
            stuck = self.stuck()
            if stuck != was_stuck:
                if stuck:
                    log.error("stalled: %s; no watchdog ping until it recovers", ", ".join(stuck))
                else:
                    log.info("recovered: watchdog pings again")
                was_stuck = stuck
            line = status_line(self.health) + (f"; STALLED: {', '.join(stuck)}" if stuck else "")
            fields = [f"STATUS={line}"]
            if watchdog and not stuck:
                fields.insert(0, "WATCHDOG=1")
            sdnotify.notify(*fields)
