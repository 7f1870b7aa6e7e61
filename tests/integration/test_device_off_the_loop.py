"""Blocking work stays off the event loop: while a SIGHUP reload loads a slow module, and while
the card is slow to open the spool, the gateway's other work goes on (its sensors are read)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from gateway.config import settings as config
from gateway.core import plugins
from gateway.core.health import Health
from gateway.device.daemon import Gateway
from gateway.device.spool import Spool
from gateway.device.spool_service import SpoolService
from gateway.modules.spikes import SpikeModule
from gateway.wire import identity
from tests.brokers import Mosquitto
from tests.gatewayproc import write_config

SLOW = 1.5  # seconds a slow module takes to start (a large model loading)
SPIKES = '\n[[module]]\nid = "spikes"\nkind = "spikes"\n'


class SlowSpikes(SpikeModule):
    def __init__(self, *, module_id: str, options: Mapping[str, Any]) -> None:
        time.sleep(SLOW)
        super().__init__(module_id=module_id, options=options)


def test_sensors_are_read_while_a_reload_loads_a_slow_module(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path / "gw", mosquitto.port, interval="0.05 s")
    cfg = config.load(path)
    gw = Gateway(cfg, ident=identity.load(cfg.device.key_file))
    real = plugins.module_class
    monkeypatch.setattr(
        plugins, "module_class", lambda kind: SlowSpikes if kind == "spikes" else real(kind)
    )

    async def main() -> tuple[bool, int, float, list[str]]:
        stop = asyncio.Event()
        task = asyncio.create_task(gw.run(stop))
        try:
            async with asyncio.timeout(30):
                while gw.spool.held or gw.health.sensor_reads["env"] < 5:
                    await asyncio.sleep(0.05)
            path.write_text(path.read_text() + SPIKES)
            reads = gw.health.sensor_reads["env"]
            t0 = time.monotonic()
            changed = await gw.reload()
            took = time.monotonic() - t0
            return (
                changed,
                gw.health.sensor_reads["env"] - reads,
                took,
                [i.name for i in gw.judge.chain.info],
            )
        finally:
            stop.set()
            await task

    changed, reads, took, names = asyncio.run(main())
    assert changed and names == ["ranges", "spikes"]
    assert took >= SLOW
    # one read every 0.05 s went on throughout (none at all while the loop was held)
    assert reads >= took / 0.05 / 3, (reads, took)


def test_the_loop_runs_while_the_spool_is_slow_to_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = config.load(write_config(tmp_path / "gw", 1))
    opened_on: list[str] = []
    real_open = Spool.open

    def slow_open(self: Spool) -> None:
        time.sleep(SLOW)  # a worn card
        opened_on.append(threading.current_thread().name)
        real_open(self)

    monkeypatch.setattr(Spool, "open", slow_open)
    storage = SpoolService(
        cfg,
        identity=identity.load(cfg.device.key_file),
        boot=b"B" * 16,
        modules=lambda: [],
        health=Health(),
    )

    async def main() -> int:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        async with storage:
            pass
        ticker.cancel()
        return ticks

    ticks = asyncio.run(main())
    assert opened_on and opened_on[0].startswith("spool")
    assert ticks >= SLOW / 0.01 / 3
