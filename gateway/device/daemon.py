"""The gateway process: its services along a reading's way (sampler -> judge -> commit buffer ->
spool -> uplink) and beside it, composed and run together; a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal

from gateway.config import settings as config
from gateway.config.settings import Config
from gateway.core.errors import GatewayError
from gateway.core.health import Health
from gateway.device import head, progress
from gateway.device.announce import Announce
from gateway.device.birth import Birth
from gateway.device.clock import ClockWatch
from gateway.device.commit import CommitBuffer
from gateway.device.inbox import Inbox
from gateway.device.judge import Judge, ModuleSwitch
from gateway.device.model_service import Chains, ModelService
from gateway.device.progress import Progress
from gateway.device.publisher import StatePublisher
from gateway.device.reload import InEffect, Reload
from gateway.device.sampler import Sampler
from gateway.device.service import Service
from gateway.device.spool_service import SpoolService
from gateway.device.uplink import Uplink
from gateway.device.watchdog import Watchdog
from gateway.modules import litert
from gateway.monitor import sdnotify
from gateway.monitor.report import StateMirror
from gateway.wire import identity

log = logging.getLogger("gateway")


class Gateway:
    """One gateway: its services wired along the reading's way and beside it."""

    def __init__(
        self, cfg: Config, *, ident: identity.Identity, shutdown_timeout: float = 10.0
    ) -> None:
        self.identity = ident
        self.shutdown_timeout = shutdown_timeout
        self.health = Health()
        self.chains = Chains.of(cfg, health=self.health)
        self.config = InEffect(cfg)  # a reload changes its modules; the birth names its digest
        self.inbox = Inbox()
        self.mirror = StateMirror(ident.device_id, cfg.device.name)
        self._along_the_way(cfg, boot=secrets.token_bytes(16))
        # Opened in this order before anything runs, closed in the reverse order at the end:
        # the spool first and last.
        self.services: list[Service] = [self.storage, self.clock, self.commits, self.sampler]
        self._beside_the_way(cfg)
        self.uplink.subscriptions = self.inbox.filters

    def _along_the_way(self, cfg: Config, *, boot: bytes) -> None:
        """sampler -> judge -> commit buffer -> spool (sealing) -> uplink, and back: the
        broker's acknowledgements to the commit buffer."""
        ident, health, u = self.identity, self.health, cfg.uplink
        self.judge = judge = Judge(self.chains.build(cfg.modules))
        self.chains.adopt(judge.chain)
        self.clock = ClockWatch(cfg.clock.mode, health=health)
        self.storage = storage = SpoolService(
            cfg, identity=ident, boot=boot, modules=judge.entries, health=health
        )
        self.spool = storage.spool
        self.commits = commits = CommitBuffer(
            storage.spool,
            executor=storage.thread,
            health=health,
            commit_interval=cfg.spool.commit_interval,
            batch_max_readings=u.batch_max_readings,
            clock_source=self.clock.source,
            refusals=storage.refusals,
        )
        self.sampler = Sampler(
            cfg.sensors,
            judge=judge,
            health=health,
            clock=self.clock.now,
            to=[commits, self.mirror],
        )
        self.sensors = self.sampler.sensors
        birth = Birth(
            self.config, identity=ident, boot=boot, sampler=self.sampler, judge=judge, spool=storage
        )
        self.uplink = Uplink(
            u,
            device_id=ident.device_id,
            client_id=u.client_id or f"dg-{ident.device_id[-20:]}",
            password=config.read_password("uplink", u.password_file, u.password_env),
            health=health,
            batches=commits,
            birth=birth,
            inbox=self.inbox,
            on_connect=self._connected,
            chain_head=head.Keeper(
                ident,
                boot=boot,
                spool=storage.spool,
                # Taking the chain up after the broker's head writes the spool before anything
                # is sealed; on a full disk it waits for room rather than fail the connection.
                in_spool=lambda fn: storage.patiently(
                    fn, waiting="sealing waits for space to take the chain up"
                ),
                anchored=commits.commit,
            ),
        )
        # The loop on the reading's way closes here, once both ends exist.
        commits.outbox = self.uplink
        self.switch = ModuleSwitch(
            judge, spool=storage, commits=commits, batch_max_readings=u.batch_max_readings
        )

    def _beside_the_way(self, cfg: Config) -> None:
        """What owners watch, and what changes the modules while the gateway runs."""
        health, uplink, judge, switch = self.health, self.uplink, self.judge, self.switch
        self.publisher = StatePublisher(
            cfg,
            mirror=self.mirror,
            identity=self.identity,
            broker=uplink,
            health=health,
            spool=self.storage,
            judge=judge,
        )
        self.inbox.route(uplink.topics["attestation"], self.publisher.attestation)
        self.reloads = Reload(
            self.config, chains=self.chains, switch=switch, broker=uplink, health=health
        )
        self.services += [self.publisher, self.reloads]
        if self.chains.store.enabled:
            models = ModelService(
                self.chains, judge=judge, switch=switch, broker=uplink, health=health
            )
            self.inbox.route(uplink.topics["model"], models.receive)
        self.announce: Announce | None = None
        if cfg.monitor.homeassistant:
            self.announce = Announce(
                cfg,
                device_id=self.identity.device_id,
                broker=uplink,
                sampler=self.sampler,
                health=health,
            )
            self.announce.listen(self.inbox)
            self.services.append(self.announce)
        # Under systemd, STATUS= says it all the time; the journal gets the changes.
        systemd = bool(os.environ.get("NOTIFY_SOCKET"))
        if systemd:
            self.services.append(
                Watchdog(sampler=self.sampler, spool_thread=self.storage.thread, health=health)
            )
        interval = None if systemd else progress.PROGRESS_INTERVAL
        self.services.append(Progress(sampler=self.sampler, health=health, interval=interval))

    async def _connected(self) -> None:
        """Right after every (re)connect: the retained messages reflect now, not the past."""
        if self.announce is not None:
            self.announce.request()
        await self.publisher.connected()

    async def reload(self) -> bool:
        """SIGHUP: take the `[[module]]` tables of the configuration file as they are now."""
        return await self.reloads.reload()

    async def run(self, stop: asyncio.Event) -> None:
        async with contextlib.AsyncExitStack() as stack:
            for service in self.services:
                await stack.enter_async_context(service)
            async with asyncio.TaskGroup() as tg:
                uplink = tg.create_task(self.uplink.run(), name="uplink")
                workers = [tg.create_task(s.run(), name=type(s).__name__) for s in self.services]
                await stop.wait()
                await self._shutdown(workers, uplink)

    async def _shutdown(
        self, workers: list[asyncio.Task[None]], uplink: asyncio.Task[None]
    ) -> None:
        log.info("stopping: sealing and flushing (at most %.0f s)", self.shutdown_timeout)
        sdnotify.notify("STOPPING=1", "STATUS=stopping: sealing and flushing")
        await asyncio.gather(*(_cancel_until_done(t) for t in workers))
        await self.commits.commit(force_seal=True)
        if self.commits.buffered:
            log.error(
                "disk full: %d readings held in memory could not be stored and are lost with "
                "this stop",
                self.commits.buffered,
            )
        if self.spool.held:
            st = await self.storage.call(self.spool.stats)
            log.info(
                "%d readings stay in the spool unsealed: nothing is sealed before the chain "
                "head for this device was read from the broker, and it was not",
                st.pending,
            )
        if not await self.uplink.drain(self.shutdown_timeout):
            log.warning(
                "%d batches not acknowledged yet; they stay in the spool for next time",
                self.uplink.pending,
            )
        await self.uplink.close()
        await _cancel_until_done(uplink)
        await self.commits.commit()  # forget what was acknowledged meanwhile
        log.info(
            "stopped: %d readings, %d batches acknowledged",
            self.health.readings,
            self.health.batches_acked,
        )


async def _cancel_until_done(task: asyncio.Task[None]) -> None:
    """Cancel `task` until it is done. Once is not always enough: on Python 3.11 a
    cancellation that meets the completion of an `asyncio.wait_for` inside it (aiomqtt waits
    for a PUBACK that way) is swallowed, and the task goes on as if never cancelled."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=1.0)


def run(cfg: Config, *, shutdown_timeout: float = 10.0) -> int:
    """Run until SIGTERM or SIGINT. Raises GatewayError for problems found at start."""
    # First: an installation without the TFLite runtime for a configured model is told which
    # extra to install, before anything is opened.
    litert.require_for(cfg.modules)
    ident = identity.load(cfg.device.key_file)
    gw = Gateway(cfg, ident=ident, shutdown_timeout=shutdown_timeout)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, gw.reloads.request)
        await gw.run(stop)

    try:
        asyncio.run(main())
    except* GatewayError as eg:
        first: BaseException = eg
        while isinstance(first, BaseExceptionGroup):  # raised in a task of a task group
            first = first.exceptions[0]
        raise first from None
    return 0
