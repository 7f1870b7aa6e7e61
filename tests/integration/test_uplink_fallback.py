"""MQTT 5 first, 3.1.1 when the broker has no MQTT 5: against amqtt, a 3.1.1-only broker."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.cli.demo import start_embedded_broker
from gateway.config import settings as config
from gateway.device.daemon import Gateway
from gateway.wire import identity
from tests.gatewayproc import write_config


def test_auto_falls_back_to_3_1_1_and_delivers(tmp_path: Path) -> None:
    async def main() -> tuple[str, int, int]:
        broker, port = await start_embedded_broker()
        try:
            auto = write_config(
                tmp_path, port, batch_max_readings=20, extra_uplink='protocol = "auto"'
            )
            cfg = config.load(auto)
            ident = identity.load(tmp_path / "device.key")
            gw = Gateway(cfg, ident=ident, shutdown_timeout=5)
            stop = asyncio.Event()
            run = asyncio.create_task(gw.run(stop))
            for _ in range(400):  # the MQTT 5 attempt waits for its CONNACK timeout first
                await asyncio.sleep(0.1)
                if gw.health.batches_acked >= 3:
                    break
            stop.set()
            await run
            return gw.health.protocol, gw.health.batches_acked, gw.health.readings_acked
        finally:
            await broker.shutdown()

    protocol, batches, readings = asyncio.run(main())
    assert protocol == "3.1.1"
    assert batches >= 3 and readings >= 60
