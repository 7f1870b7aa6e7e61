"""A sensor driver run by the real sampler (`SensorTask`: worker threads, failed reads, re-open
after three), for the tests of every driver; and the unplug-and-replug run of a serial chip."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from drivers.base import SensorDriver
from drivers.emulators.pty import PtyServer
from gateway.config.settings import SensorConfig
from gateway.core.health import Health
from gateway.core.reading import Reading
from gateway.device.sampler import SensorTask
from gateway.modules.chain import ModuleChain
from gateway.modules.ranges import RangeModule


class Harness:
    """A driver run by the real SensorTask (worker threads, failures, re-open after three)."""

    def __init__(self, driver: Any, *, interval: float = 0.01) -> None:
        self.driver = driver
        self.health = Health()
        self.health.driver_counters[driver.sensor_id] = driver.counters
        self.out: list[Reading] = []
        chain = ModuleChain([RangeModule(module_id="physics", options={})], health=self.health)
        cfg = SensorConfig(id=driver.sensor_id, driver=driver.name, interval=interval, options={})
        self.task = SensorTask(
            cfg,
            driver,
            chain=chain,
            health=self.health,
            accept=self.out.extend,
            clock=lambda: (True, "ntp"),
        )

    def failed(self) -> list[Reading]:
        return [r for r in self.out if r.value is None]

    def good(self) -> list[Reading]:
        return [r for r in self.out if r.value is not None]

    async def until(self, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.005)

    def run(self, scenario: Callable[[Harness], Awaitable[None]]) -> None:
        async def main() -> None:
            task = asyncio.create_task(self.task.run())
            try:
                await scenario(self)
            finally:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

        asyncio.run(main())


def unplug_and_replug(server: PtyServer[Any], driver: SensorDriver) -> Harness:
    """Run `driver` under the sampler every 0.05 s: a while with the chip plugged, a second
    unplugged, then plugged back until a good reading came (15 s at most); `server` is stopped
    at the end. The harness holds what came out."""
    h = Harness(driver, interval=0.05)

    async def scenario(h: Harness) -> None:
        await asyncio.sleep(0.4)
        server.unplug()
        await asyncio.sleep(1.0)
        unplugged = len(h.out)
        server.replug()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if len(h.out) > unplugged and h.out[-1].value is not None:
                break
            await asyncio.sleep(0.05)

    try:
        h.run(scenario)
    finally:
        server.stop()
    return h
