"""The daemon feeds one sensor's ambient pressure to another: a BME280's reading reaches the
SCD41 on the same gateway as its pressure compensation (both on the emulated I2C bus)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from drivers.emulators import i2c as emulated
from gateway.config import settings as config
from gateway.device.daemon import Gateway
from gateway.wire import identity
from tests.brokers import Mosquitto

CONFIG = """
[device]
name = "ambient"
key_file = "device.key"
[spool]
path = "spool.db"
commit_interval = "1 s"
[uplink]
url = "mqtt://127.0.0.1:{port}"
[clock]
mode = "synced"
[[sensor]]
id = "climate"
driver = "bme280"
interval = "0.5 s"
bus = "emulated"
[[sensor]]
id = "co2"
driver = "scd4x"
interval = "5 s"
bus = "emulated"
variant = "scd41"
"""


def test_bme280_pressure_reaches_the_scd41(tmp_path: Path, mosquitto: Mosquitto) -> None:
    emulated.reset(seed=3)
    emulated.air().fix(pressure=90_000.0, co2=800.0)  # up a mountain
    ident = identity.generate(tmp_path / "device.key")
    cfg = config.loads(CONFIG.format(port=mosquitto.port), base_dir=tmp_path)

    async def main() -> Gateway:
        gw = Gateway(cfg, ident=ident, shutdown_timeout=2)
        stop = asyncio.Event()
        run = asyncio.create_task(gw.run(stop))
        for _ in range(150):
            await asyncio.sleep(0.1)
            if gw.health.sensor_reads["co2"] >= 2:
                break
        stop.set()
        await run
        return gw

    gw = asyncio.run(main())
    assert gw.health.sensor_reads["co2"] >= 2
    scd = emulated.bus().device(0x62)
    assert scd is not None
    sent = scd.commands("ambient_pressure")  # type: ignore[attr-defined]
    assert sent and all(abs(hpa - 900) <= 2 for (hpa,) in sent), sent
