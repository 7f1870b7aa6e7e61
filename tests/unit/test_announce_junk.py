"""Home Assistant's status topic is anyone's: only its two words mean something to a gateway."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

from gateway.config.settings import loads, sample_text
from gateway.core.health import Health
from gateway.device.announce import Announce
from gateway.device.sampler import Sampler
from gateway.device.service import Broker


def _announce(tmp_path: Path, health: Health) -> Announce:
    cfg = loads(sample_text(), base_dir=tmp_path)
    # _ha_status touches neither the broker nor the sensors
    none: Any = None
    return Announce(
        cfg,
        device_id="z6Mk",
        broker=cast(Broker, none),
        sampler=cast(Sampler, none),
        health=health,
    )


def test_junk_on_home_assistants_status_is_counted_and_changes_nothing(tmp_path: Path) -> None:
    health = Health()
    a = _announce(tmp_path, health)

    async def say(*payloads: bytes) -> None:
        for p in payloads:
            await a._ha_status("homeassistant/status", p)

    asyncio.run(say(b"offline", b"\x00\xff junk", b"{}", b""))
    assert health.ignored_messages["status"] == 3
    assert not a._wake.is_set(), "junk must not make the gateway announce again"
    asyncio.run(say(b"online"))
    assert a._wake.is_set()
    assert health.ignored_messages["status"] == 3
