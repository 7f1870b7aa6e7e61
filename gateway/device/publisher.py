"""What owners watch, beside the reading's way: the `state` mirror (the latest judged reading of
each quantity) and the `health` message, published retained at their intervals and after every
connect, and the status file `depin-gateway status` reads, whether the gateway runs under
systemd or was started by hand."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from typing import Any

from gateway import __version__
from gateway.config.settings import Config
from gateway.core.files import write_atomic
from gateway.core.health import Health
from gateway.device.judge import Judge
from gateway.device.service import Broker, Plain
from gateway.device.spool_service import SpoolService
from gateway.monitor import status
from gateway.monitor.report import HealthReport, StateMirror, read_attestation, supersedes
from gateway.wire.identity import Identity

log = logging.getLogger("gateway")


class StatePublisher(Plain):
    """Takes nothing off the reading's way but a copy: the state mirror sees every judged
    reading beside the commit buffer; publishing never holds a reading up."""

    def __init__(
        self,
        cfg: Config,
        *,
        mirror: StateMirror,
        identity: Identity,
        broker: Broker,
        health: Health,
        spool: SpoolService,
        judge: Judge,
    ) -> None:
        self.monitor = cfg.monitor
        self.mirror = mirror
        self.did = identity.did
        self.broker = broker
        self.health = health
        self.spool = spool
        self.judge = judge
        self.report = HealthReport(
            device_id=identity.device_id, name=cfg.device.name, version=__version__
        )
        self._status: dict[str, bytes] = {}
        self._status_path = status.status_file(cfg.spool.path)
        # Written into the file: `status` takes it only for its own spool, while we run.
        self._status_head = json.dumps(
            {"pid": os.getpid(), "spool": status.spool_key(cfg.spool.path)}
        )[1:-1]
        self._status_ok: bool | None = None  # None: the directory is not prepared yet
        self._no_attestors_said = False
        #: the latest attestation taken from each attestor, by (epoch start, revision)
        self._attested: dict[str, dict[str, Any]] = {}

    async def __aexit__(self, *exc_info: object) -> None:
        """A stopped gateway has no status (systemd removes its runtime directory too; a
        gateway run by hand leaves nothing in /tmp)."""
        if self._status_ok:
            with contextlib.suppress(OSError):
                self._status_path.unlink()

    async def connected(self) -> None:
        """Right after every (re)connect: the retained messages reflect now, not the past."""
        await self._publish_state(force=True)
        await self._publish_health()

    async def attestation(self, topic: str, payload: bytes) -> None:
        """A message on the attestation topic: the score of a valid one, signed by one of
        `[monitor] attestors`, shows in health when it is that attestor's latest (a later epoch,
        or a higher revision of the same one) and no older than the one shown; anything else,
        a superseded one replayed too, is counted and left aside."""
        if not payload:  # an empty retained message clears the topic; it is not a message
            return
        found = read_attestation(payload, self.did, self.monitor.attestors)
        if found is None:
            self.health.ignored_messages["attestation"] += 1
            if not self.monitor.attestors and not self._no_attestors_said:
                self._no_attestors_said = True
                log.warning(
                    "an attestation came and was not taken: no [monitor] attestors are "
                    "configured (health's attestation stays empty)"
                )
            return
        held = self._attested.get(found["attestor"])
        if not supersedes(found, held):
            # A superseded one replayed (an older epoch, a lower revision, the same again).
            self.health.ignored_messages["attestation"] += 1
            return
        self._attested[found["attestor"]] = found
        shown = self.health.attestation
        if not shown or shown.get("attestor") == found["attestor"] or supersedes(found, shown):
            self.health.attestation = found

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_state = next_health = loop.time()
        while True:
            try:
                next_state, next_health = await self._once(next_state, next_health)
            except Exception:  # what owners watch must never stop what they watch
                log.exception("state/health not published")
                next_state = next_health = loop.time() + self.monitor.health_interval
            await asyncio.sleep(max(0.05, min(next_state, next_health) - loop.time()))

    async def _once(self, next_state: float, next_health: float) -> tuple[float, float]:
        now = asyncio.get_running_loop().time()
        if now >= next_state:
            next_state = now + self.monitor.state_interval
            await self._publish_state()
        if now >= next_health:
            next_health = now + self.monitor.health_interval
            await self._publish_health()
        return next_state, next_health

    async def _publish_state(self, *, force: bool = False) -> None:
        if force or self.mirror.changed:
            data = self.mirror.to_json()
            self._status["state"] = data
            await self.broker.publish(self.broker.topics["state"], data)
            await self._write_status()

    async def _publish_health(self) -> None:
        await self.spool.read_depth()  # the chain position as of now, not up to a second old
        doc = self.report.build(
            self.health,
            modules=[(i.module_id, i.name, i.version, i.digest) for i in self.judge.chain.info],
        )
        data = HealthReport.to_json(doc)
        self._status["health"] = data
        await self.broker.publish(self.broker.topics["health"], data)
        await self._write_status()

    async def _write_status(self) -> None:
        """In a runtime directory, on tmpfs wherever there is one
        (`gateway.monitor.status.status_file`)."""
        path = self._status_path
        parts = [f'"{k}": {v.decode()}' for k, v in sorted(self._status.items())]
        text = "{" + ", ".join([self._status_head, *parts]) + "}\n"

        def write() -> None:
            if self._status_ok is None:
                self._status_ok = status.prepare_dir(path.parent)
                if not self._status_ok:
                    log.warning(
                        "no status file for `depin-gateway status`: %s is not this user's "
                        "directory",
                        path.parent,
                    )
            if self._status_ok:
                # Readable by the owner's `depin-gateway status` despite the unit's
                # UMask=0077: values and counters, nothing secret. No fsync: it is rewritten
                # every few seconds, and meaningless after a restart.
                write_atomic(path, text.encode(), mode=0o644, durable=False)

        try:
            await asyncio.to_thread(write)
        except OSError as e:
            log.debug("status file not written: %s", e)
