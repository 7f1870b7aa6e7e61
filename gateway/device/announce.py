"""Home Assistant MQTT discovery, beside the reading's way: the retained config of every entity
the gateway's sensors produce, announced after each connect, when Home Assistant comes back
online, and when the entities changed (`gateway.monitor.homeassistant` builds the messages)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from gateway import __version__
from gateway.config.settings import Config
from gateway.core.health import Health
from gateway.device.inbox import Inbox
from gateway.device.sampler import Sampler
from gateway.device.service import Broker, Plain
from gateway.monitor import homeassistant

log = logging.getLogger("gateway")


class Announce(Plain):
    """Tells Home Assistant which entities the sensors on the reading's way produce."""

    def __init__(
        self,
        cfg: Config,
        *,
        device_id: str,
        broker: Broker,
        sampler: Sampler,
        health: Health | None = None,
    ) -> None:
        self.cfg = cfg
        self.health = health
        self.device_id = device_id
        self.broker = broker
        self.sampler = sampler
        self.prefix = cfg.monitor.discovery_prefix
        self._seen: set[str] = set()  # this device's config topics the broker retains
        self._sent: dict[str, bytes] = {}
        self._wake = asyncio.Event()
        self._busy = False

    def listen(self, inbox: Inbox) -> None:
        """Home Assistant's status, and this device's config topics the broker retains."""
        inbox.route(homeassistant.birth_topic(self.prefix), self._ha_status)
        for topic_filter in homeassistant.subscriptions(self.prefix, self.device_id):
            inbox.route(topic_filter, self._retained)

    def request(self) -> None:
        """Announce soon, unless an announcement is under way."""
        if not self._busy:
            self._wake.set()

    async def _ha_status(self, topic: str, payload: bytes) -> None:
        said = payload.strip()
        if said == b"online":  # Home Assistant (re)started: announce again
            self.request()
        elif said != b"offline" and self.health is not None:
            # Anyone may publish on Home Assistant's status topic: what is neither of its two
            # words is counted with the other refused messages, and changes nothing.
            self.health.ignored_messages["status"] += 1

    async def _retained(self, topic: str, payload: bytes) -> None:
        if payload:
            self._seen.add(topic)
        else:
            self._seen.discard(topic)

    def discovery(self) -> dict[str, bytes]:
        mon = self.cfg.monitor
        return homeassistant.discovery(
            device_id=self.device_id,
            name=self.cfg.device.name,
            version=__version__,
            prefix=self.cfg.uplink.topic_prefix,
            discovery_prefix=self.prefix,
            sensors=[
                homeassistant.Sensor(s.cfg.id, s.units, s.cfg.driver, s.cfg.interval)
                for s in self.sampler.sensors
            ],
            state_interval=mon.state_interval,
        )

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.cfg.monitor.health_interval
        check = loop.time() + interval
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(check):
                    await self._wake.wait()
            if loop.time() >= check:
                check = loop.time() + interval
                # What a chip measures is known once it answered (a BMP280 in a BME280's place
                # has no humidity): announce again when the entities changed.
                if self._sent and self.discovery() != self._sent:
                    self._wake.set()
            if self._wake.is_set():
                self._wake.clear()
                self._busy = True
                try:
                    await self._announce()
                except Exception:  # discovery is a convenience: it never stops the gateway
                    log.exception("home assistant: discovery not published")
                finally:
                    self._busy = False

    async def _announce(self, settle: float = 2.0) -> None:
        """Every entity's config, retained; then, once the broker delivered what it retains for
        this device, an empty retained config for each entity no longer produced (a dropped
        sensor), which makes Home Assistant remove it."""
        current = self.discovery()
        for topic, payload in current.items():
            if not await self.broker.publish(topic, payload, qos=1, retain=True):
                return  # not connected: the next connect announces
        self._sent = current
        await asyncio.sleep(settle)
        for topic in homeassistant.stale(
            self._seen, current, device_id=self.device_id, discovery_prefix=self.prefix
        ):
            if await self.broker.publish(topic, b"", qos=1, retain=True):
                log.info("home assistant: removed %s (no longer configured)", topic)
                self._seen.discard(topic)
