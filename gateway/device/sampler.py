"""The first step on a reading's way: one asyncio task per sensor reads it at the sensor's
interval, has the readings judged at once (`gateway.device.judge`), and hands them on (the
commit buffer, the state mirror).

Blocking drivers run in a worker thread. A sensor that fails yields failed readings (no value,
flag `sensor-error`) at its interval, so its absence is visible in the signed record, and it is
re-opened with backoff; one sensor's trouble never touches another's task.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from drivers.base import Measurement, SensorDriver
from gateway.config.settings import SensorConfig
from gateway.core import plugins
from gateway.core.health import Health
from gateway.core.reading import Reading
from gateway.device.service import Plain

log = logging.getLogger("gateway.sampler")

#: how long one read may take before the sensor's task counts as stalled
READ_STALL = 60.0
#: quantities one sensor's driver may use to compensate another's reading
AMBIENT = frozenset({"pressure"})


class Judges(Protocol):
    """What judges a sensor task's readings as soon as they are taken (the module chain, or
    the gateway's judge in front of it)."""

    def judge(self, readings: Sequence[Reading]) -> None: ...


class Downstream(Protocol):
    """Where judged readings go next."""

    def accept(self, readings: Sequence[Reading]) -> None: ...


class SensorTask:
    def __init__(
        self,
        cfg: SensorConfig,
        driver: SensorDriver,
        *,
        chain: Judges,
        health: Health,
        accept: Callable[[list[Reading]], None],
        clock: Callable[[], tuple[bool, str]],
    ) -> None:
        self.cfg = cfg
        self.driver = driver
        self.chain = chain
        self.health = health
        self.accept = accept
        self.clock = clock
        self.units = dict(driver.quantities)
        self.opened = False
        self._failures = 0
        #: loop time by which this task must have come round again; the watchdog compares
        self.due_by = float("inf")
        #: set once the sensor was read (or failed) for the first time: READY waits for it
        self.first_read = asyncio.Event()

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.driver.blocking:
            return await asyncio.to_thread(fn, *args)
        return fn(*args)

    async def _open(self) -> None:
        await self._call(self.driver.open)
        # What a chip measures may only be known once it answered (a BMP280 in a BME280's
        # place has no humidity).
        self.units = dict(self.driver.quantities)
        self.opened = True
        self._failures = 0
        log.info("sensor %s (%s) open", self.cfg.id, self.cfg.driver)

    async def read_once(self) -> list[Reading]:
        now = time.time()
        synced, _ = self.clock()
        try:
            if not self.opened:
                await self._open()
            measurements: list[Measurement] = await self._call(self.driver.read, now)
            self.health.sensor_reads[self.cfg.id] += 1
            self._failures = 0
        except Exception as e:  # any driver failure is this sensor's alone
            self._failures += 1
            self.health.sensor_error(self.cfg.id, str(e))
            if self._failures in (1, 10) or self._failures % 100 == 0:
                log.warning("sensor %s: %s (failure %d)", self.cfg.id, e, self._failures)
            if self._failures >= 3 and self.opened:
                # Repeated failures: close and re-open, as after an unplugged adapter.
                await self._close()
            measurements = [Measurement(q, None, ("sensor-error",)) for q in self.units]
        self.first_read.set()
        readings = [
            Reading(
                self.cfg.id,
                m.quantity,
                self.units.get(m.quantity, ""),
                m.value,
                now,
                synced,
                0.0,
                list(m.flags),
            )
            for m in measurements
        ]
        self.chain.judge(readings)
        return readings

    async def _close(self) -> None:
        self.opened = False
        try:
            await self._call(self.driver.close)
        except Exception as e:  # closing a vanished device may fail; nothing to do about it
            log.debug("sensor %s close: %s", self.cfg.id, e)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.cfg.interval
        due = loop.time()
        try:
            while True:
                # A read (open, retries and the driver's own timeouts included) that takes
                # longer than this is a hung driver: the watchdog stops pinging.
                self.due_by = loop.time() + READ_STALL + interval
                self.accept(await self.read_once())
                due += interval
                # After an overrun, skip the missed slots instead of reading in a burst.
                if due < loop.time():
                    due = loop.time()
                # Back off a failing sensor's re-open attempts (never slower than 5 min).
                if self._failures > 3:
                    due += min(300.0, interval * min(self._failures, 30))
                self.due_by = due + READ_STALL + interval
                await asyncio.sleep(due - loop.time())
        finally:
            await self._close()


class Sampler(Plain):
    """The configured sensors, each read by its own task, and what they hand on: judged
    readings go to every `to` in order; a sensor's ambient readings (pressure) also go to the
    other sensors' drivers, which compensate their own with them."""

    def __init__(
        self,
        configs: Sequence[SensorConfig],
        *,
        judge: Judges,
        health: Health,
        clock: Callable[[], tuple[bool, str]],
        to: Sequence[Downstream],
    ) -> None:
        self.to = list(to)
        self.taken = 0  # readings taken and judged since start (committed or not yet)
        self.sensors: list[SensorTask] = []
        for sc in configs:
            driver = plugins.driver_class(sc.driver)(sensor_id=sc.id, options=sc.options)
            health.driver_counters[sc.id] = driver.counters
            self.sensors.append(
                SensorTask(sc, driver, chain=judge, health=health, accept=self.accept, clock=clock)
            )

    def accept(self, readings: list[Reading]) -> None:
        """Hand judged readings on."""
        self.taken += len(readings)
        for step in self.to:
            step.accept(readings)
        # Share ambient conditions between sensors: an SCD4x compensates its CO2 reading for
        # the pressure a BME280 on the same gateway just measured.
        for r in readings:
            if r.quantity in AMBIENT and r.value is not None and "range" not in r.flags:
                for s in self.sensors:
                    if s.cfg.id != r.sensor:
                        s.driver.ambient(r.quantity, r.value)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for s in self.sensors:
                tg.create_task(s.run(), name=f"sensor-{s.cfg.id}")
        await asyncio.Event().wait()  # no sensors: nothing to read, and nothing stops
