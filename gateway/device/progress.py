"""What the gateway does, said in one INFO line now and then, for someone who started it by hand:
they see it work (or wait for the broker) rather than silence. Under systemd the STATUS= line
says it all the time (`watchdog`), and the journal gets only the changes."""

from __future__ import annotations

import asyncio
import logging

from gateway.core.health import Health
from gateway.device.sampler import Sampler
from gateway.device.service import Plain

log = logging.getLogger("gateway")

#: seconds between the INFO lines when the gateway runs by hand
PROGRESS_INTERVAL = 60.0


class Progress(Plain):
    """A line every `interval` seconds (None: never) and whenever the broker connection comes
    or goes."""

    def __init__(self, *, sampler: Sampler, health: Health, interval: float | None) -> None:
        self.sampler = sampler
        self.health = health
        self.interval = interval

    def line(self, new_readings: int, seconds: float) -> str:
        h = self.health
        broker = f"broker connected (MQTT {h.protocol})" if h.connected else "broker away"
        disk = "; disk full: readings held in memory" if h.disk_full else ""
        return (
            f"{broker}; {self.sampler.taken} readings since start, {new_readings} in the last "
            f"{seconds:.0f} s; {h.batches_acked} batches acknowledged; {h.queue_depth} "
            f"readings queued{disk}"
        )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        h, interval = self.health, self.interval
        # The first connect is not news (the uplink says "connected to"); a broker that is not
        # there after a second is.
        connected = True
        since, readings = loop.time(), self.sampler.taken
        while True:
            # Once a second: the uplink has no hook for a lost connection, and a flag is cheap
            # to look at.
            await asyncio.sleep(1.0)
            now = loop.time()
            changed = h.connected != connected
            if changed or (interval is not None and now - since >= interval):
                log.info("%s", self.line(self.sampler.taken - readings, now - since))
                connected = h.connected
                since, readings = now, self.sampler.taken
