"""The gateway process: sensors -> modules -> spool -> uplink, and a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import secrets
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from gateway import __version__, config, cose, identity, payloads, plugins
from gateway.clock import ClockState, detect
from gateway.config import Config
from gateway.errors import ConfigError, GatewayError
from gateway.health import Health
from gateway.modules.chain import ModuleChain
from gateway.pipeline import Pipeline
from gateway.reading import Reading
from gateway.sampler import SensorTask
from gateway.spool import Spool
from gateway.uplink import Uplink

log = logging.getLogger("gateway")
T = TypeVar("T")

CLOCK_POLL = 5.0
AMBIENT = frozenset({"pressure"})
SEAL_AHEAD_PER_INFLIGHT = 2


def config_digest(cfg: Config) -> bytes:
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).digest()


def read_password(cfg: Config) -> str | None:
    u = cfg.uplink
    if u.password_file is not None:
        try:
            return u.password_file.read_text().rstrip("\r\n")
        except OSError as e:
            raise ConfigError(
                [f"uplink.password_file: cannot read {u.password_file}: {e}"]
            ) from None
    if u.password_env is not None:
        value = os.environ.get(u.password_env)
        if value is None:
            raise ConfigError([f"uplink.password_env: variable {u.password_env} is not set"])
        return value
    return None


class Gateway:
    def __init__(
        self, cfg: Config, *, ident: identity.Identity, shutdown_timeout: float = 10.0
    ) -> None:
        self.cfg = cfg
        self.identity = ident
        self.shutdown_timeout = shutdown_timeout
        self.boot = secrets.token_bytes(16)
        self.started = time.time()
        self.health = Health()
        self.chain = ModuleChain.from_config(cfg.modules, health=self.health)
        self.clock = detect(cfg.clock.mode)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        u = cfg.uplink
        self.spool = Spool(
            cfg.spool.path,
            identity=ident,
            boot=self.boot,
            max_size=cfg.spool.max_size,
            batch_max_readings=u.batch_max_readings,
            batch_max_age=u.batch_max_age,
            seal_ahead=u.max_inflight * SEAL_AHEAD_PER_INFLIGHT,
            modules=lambda: self.chain.batch_entries(),
        )
        self.pipeline = Pipeline(
            self.spool,
            executor=self.executor,
            health=self.health,
            commit_interval=cfg.spool.commit_interval,
            batch_max_readings=u.batch_max_readings,
            on_sealed=self._sealed,
            clock_source=lambda: self.clock.source,
        )
        self.uplink = Uplink(
            u,
            device_id=ident.device_id,
            client_id=u.client_id or f"dg-{ident.device_id[-20:]}",
            password=read_password(cfg),
            health=self.health,
            backlog=self._backlog,
            birth=self._birth,
            on_ack=self.pipeline.acked,
        )
        self._reload_lock = asyncio.Lock()
        self.sensors: list[SensorTask] = []
        for sc in cfg.sensors:
            driver = plugins.driver_class(sc.driver)(sensor_id=sc.id, options=sc.options)
            self.health.driver_counters[sc.id] = driver.counters
            self.sensors.append(
                SensorTask(
                    sc,
                    driver,
                    chain=self.chain,
                    health=self.health,
                    accept=self._accept,
                    clock=self._clock,
                )
            )

    # --- callbacks ----------------------------------------------------------------------------

    def _clock(self) -> tuple[bool, str]:
        return self.clock.synced, self.clock.source

    def _accept(self, readings: list[Reading]) -> None:
        self.pipeline.accept(readings)
        # Share ambient conditions between sensors: an SCD4x compensates its CO2 reading for
        # the pressure a BME280 on the same gateway just measured.
        for r in readings:
            if r.quantity in AMBIENT and r.value is not None and "range" not in r.flags:
                for s in self.sensors:
                    if s.cfg.id != r.sensor:
                        s.driver.ambient(r.quantity, r.value)

    def _sealed(self, seq: int, message: bytes, n: int) -> None:
        self.uplink.offer(seq, message, n)

    async def _in_spool(self, fn: Callable[[], T]) -> T:
        """Run a spool call on the spool's own thread: SQLite I/O never blocks the loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn)

    async def _backlog(self) -> list[tuple[int, bytes, int]]:
        skip = self.pipeline.unacked_pending_delete()
        rows = await self._in_spool(self.spool.unacked)
        return [r for r in rows if r[0] not in skip]

    async def _birth(self) -> bytes:
        next_seq = await self._in_spool(self.spool.first_unacked_seq)
        payload = payloads.encode_birth(
            did=self.identity.did,
            version=__version__,
            boot=self.boot,
            started=round(self.started, 3),
            config_sha256=config_digest(self.cfg),
            sensors=[
                {
                    "id": s.cfg.id,
                    "driver": s.cfg.driver,
                    "quantities": list(s.units),
                    "interval": s.cfg.interval,
                }
                for s in self.sensors
            ],
            modules=self.chain.batch_entries(),
            next_seq=next_seq,
        )
        return cose.sign1(self.identity, cose.TYP_BIRTH, payload)

    # --- running ------------------------------------------------------------------------------

    async def _poll_clock(self) -> None:
        while True:
            await asyncio.sleep(CLOCK_POLL)
            state: ClockState = await asyncio.to_thread(detect, self.cfg.clock.mode)
            if state != self.clock:
                log.info(
                    "clock is now %s (%s)", "synced" if state.synced else "unsynced", state.source
                )
                self.clock = state
            self.health.clock_synced, self.health.clock_source = state.synced, state.source

    async def _update_depth(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            st = await self._in_spool(self.spool.stats)
            self.health.queue_depth = st.pending + st.sealed_readings
            olds = [t for t in (st.oldest_pending, st.oldest_sealed) if t is not None]
            self.health.oldest_unsent = min(olds) if olds else None

    async def open(self) -> None:
        await self._in_spool(self.spool.open)
        st = self.spool.stats()
        log.info(
            "device %s; spool %s: %d pending readings, %d sealed batches awaiting the broker, "
            "next seq %d",
            self.identity.did,
            self.cfg.spool.path,
            st.pending,
            st.sealed,
            st.next_seq,
        )
        self.health.clock_synced, self.health.clock_source = self.clock.synced, self.clock.source

    async def reload(self) -> bool:
        """SIGHUP: take the `[[module]]` tables of the configuration file as they are now.

        Readings already judged are sealed first, so each batch names the modules that judged
        its records; the sensors go on reading throughout and nothing in memory or in the spool
        is touched. Other sections take effect at the next start. A broken file changes
        nothing. Returns whether the chain changed."""
        async with self._reload_lock:
            source = self.cfg.source
            if source is None:
                log.warning("reload: the configuration did not come from a file")
                return False
            try:
                new_cfg = await asyncio.to_thread(config.load, source)
                chain = ModuleChain.from_config(new_cfg.modules, health=self.health)
            except ConfigError as e:
                for problem in e.problems:
                    log.error("reload refused: %s", problem)
                return False
            except Exception as e:  # a module that cannot start must not take the old chain
                log.error("reload refused: a module failed to start: %s", e)
                return False
            changed = [
                name
                for name in ("device", "spool", "uplink", "clock", "log", "sensors")
                if getattr(new_cfg, name) != getattr(self.cfg, name)
            ]
            if changed:
                log.warning("reload: changes to %s take effect at the next start", changed)
            if new_cfg.modules == self.cfg.modules:
                log.info("reload: modules unchanged")
                return False
            await self.pipeline.commit(force_seal=True)
            self.chain = chain
            for sensor in self.sensors:
                sensor.chain = chain
            self.cfg = dataclasses.replace(self.cfg, modules=new_cfg.modules)
            self.health.reloads += 1
            log.info(
                "reload: modules now %s",
                ", ".join(f"{i.module_id} ({i.name} {i.version})" for i in chain.info) or "none",
            )
            self.uplink.announce()
            return True

    async def run(self, stop: asyncio.Event) -> None:
        await self.open()
        try:
            async with asyncio.TaskGroup() as tg:
                uplink = tg.create_task(self.uplink.run(), name="uplink")
                workers = [
                    tg.create_task(self.pipeline.run(), name="pipeline"),
                    tg.create_task(self._poll_clock(), name="clock"),
                    tg.create_task(self._update_depth(), name="health"),
                ]
                workers += [
                    tg.create_task(s.run(), name=f"sensor-{s.cfg.id}") for s in self.sensors
                ]
                await stop.wait()
                await self._shutdown(workers, uplink)
        finally:
            await self._in_spool(self.spool.close)
            self.executor.shutdown(wait=True)

    async def _shutdown(
        self, workers: list[asyncio.Task[None]], uplink: asyncio.Task[None]
    ) -> None:
        log.info("stopping: sealing and flushing (at most %.0f s)", self.shutdown_timeout)
        for t in workers:
            t.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        await self.pipeline.commit(force_seal=True)
        if not await self.uplink.drain(self.shutdown_timeout):
            log.warning(
                "%d batches not acknowledged yet; they stay in the spool for next time",
                self.uplink.pending,
            )
        await self.uplink.close()
        uplink.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await uplink
        await self.pipeline.commit()  # forget what was acknowledged meanwhile
        log.info(
            "stopped: %d readings, %d batches acknowledged",
            self.health.readings,
            self.health.batches_acked,
        )


def run(cfg: Config, *, shutdown_timeout: float = 10.0) -> int:
    """Run until SIGTERM or SIGINT. Raises GatewayError for problems found at start."""
    ident = identity.load(cfg.device.key_file)
    gw = Gateway(cfg, ident=ident, shutdown_timeout=shutdown_timeout)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        reloads: set[asyncio.Task[bool]] = set()

        def on_hup() -> None:
            task = asyncio.create_task(gw.reload(), name="reload")
            reloads.add(task)
            task.add_done_callback(reloads.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        await gw.run(stop)

    try:
        asyncio.run(main())
    except* GatewayError as eg:
        raise eg.exceptions[0] from None
    return 0
