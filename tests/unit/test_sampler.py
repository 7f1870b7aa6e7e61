"""The sampler with drivers of the kind the chip drivers are: blocking I/O, failures, unplugs."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from typing import ClassVar

from drivers.base import Measurement, SensorDriver
from gateway.config.settings import SensorConfig
from gateway.core.errors import SensorError
from gateway.core.health import Health
from gateway.core.reading import Reading
from gateway.device.sampler import SensorTask
from gateway.modules.chain import ModuleChain
from gateway.modules.ranges import RangeModule


class SlowSerialLike(SensorDriver):
    """Blocks like a serial read with a timeout; unplugged while `present` is clear."""

    name = "slow"
    blocking = True

    def __init__(self) -> None:
        super().__init__(sensor_id="slow", options={})
        self.present = threading.Event()
        self.present.set()
        self.opens = 0
        self.closes = 0
        self.threads: set[str] = set()

    @property
    def quantities(self) -> Mapping[str, str]:
        return {"pm2_5": "ug/m3", "pm10": "ug/m3"}

    def open(self) -> None:
        if not self.present.is_set():
            raise SensorError("/dev/ttyUSB0: no such device")
        self.opens += 1

    def read(self, now: float) -> list[Measurement]:
        self.threads.add(threading.current_thread().name)
        time.sleep(0.05)
        if not self.present.is_set():
            raise SensorError("read timeout")
        return [Measurement("pm2_5", 12.5), Measurement("pm10", 20.0)]

    def close(self) -> None:
        self.closes += 1


class Inline(SensorDriver):
    name = "inline"
    blocking = False
    QUANTITIES: ClassVar[dict[str, str]] = {"temperature": "Cel"}

    @property
    def quantities(self) -> Mapping[str, str]:
        return self.QUANTITIES

    def read(self, now: float) -> list[Measurement]:
        return [Measurement("temperature", 21.0)]


def _task(driver: SensorDriver, out: list[Reading], health: Health, interval: float) -> SensorTask:
    chain = ModuleChain([RangeModule(module_id="physics", options={})], health=health)
    cfg = SensorConfig(id=driver.sensor_id, driver=driver.name, interval=interval, options={})
    return SensorTask(
        cfg, driver, chain=chain, health=health, accept=out.extend, clock=lambda: (True, "ntp")
    )


def test_blocking_reads_stay_off_the_event_loop_and_sensors_are_independent() -> None:
    health = Health()
    slow_out: list[Reading] = []
    fast_out: list[Reading] = []
    slow = SlowSerialLike()

    async def main() -> None:
        tasks = [
            asyncio.create_task(_task(slow, slow_out, health, 0.1).run()),
            asyncio.create_task(
                _task(Inline(sensor_id="t", options={}), fast_out, health, 0.01).run()
            ),
        ]
        ticks = 0
        t_end = time.monotonic() + 1.0
        while time.monotonic() < t_end:
            await asyncio.sleep(0.005)
            ticks += 1
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        # The loop kept ticking while the slow driver blocked in its thread.
        assert ticks > 100

    asyncio.run(main())
    assert "MainThread" not in slow.threads
    assert len(fast_out) > 50
    assert 12 <= len(slow_out) <= 22  # ~10 reads of 2 quantities in 1 s
    assert slow.closes == 1  # closed when its task ended


def test_unplugged_sensor_gives_failed_readings_then_recovers() -> None:
    health = Health()
    out: list[Reading] = []
    drv = SlowSerialLike()

    async def main() -> None:
        task = asyncio.create_task(_task(drv, out, health, 0.02).run())
        await asyncio.sleep(0.3)
        drv.present.clear()  # the USB adapter is pulled
        await asyncio.sleep(0.6)
        drv.present.set()  # and plugged back
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (not out or out[-1].value is None):
            await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    asyncio.run(main())
    failed = [r for r in out if r.value is None]
    assert failed and all(r.flags == ["sensor-error"] for r in failed)
    assert health.sensor_errors["slow"] >= 3
    assert drv.opens >= 2, "the driver was re-opened after repeated failures"
    assert out[-1].value == 20.0, "readings resumed after the sensor came back"
