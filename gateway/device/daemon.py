"""The gateway process: sensors -> modules -> spool -> uplink, and a clean stop on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import copy as copy_module
import dataclasses
import hashlib
import json
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar

from gateway import __version__
from gateway.config import settings as config
from gateway.config.settings import Config, ModuleConfig
from gateway.core import plugins
from gateway.core.errors import ConfigError, GatewayError
from gateway.core.files import write_atomic
from gateway.core.health import Health
from gateway.core.reading import Reading
from gateway.device import head
from gateway.device.clock import ClockState, detect
from gateway.device.pipeline import Pipeline
from gateway.device.sampler import SensorTask
from gateway.device.spool import Spool
from gateway.device.uplink import Uplink
from gateway.models.store import Installed, ModelStore, Outcome
from gateway.modules import litert
from gateway.modules.base import DetectionModule
from gateway.modules.chain import ModuleChain
from gateway.monitor import homeassistant, sdnotify, status
from gateway.monitor.report import HealthReport, StateMirror, read_attestation
from gateway.wire import cose, identity, payloads

log = logging.getLogger("gateway")
T = TypeVar("T")

CLOCK_POLL = 5.0
AMBIENT = frozenset({"pressure"})
SEAL_AHEAD_PER_INFLIGHT = 2
#: a spool job (a commit: SQLite, fsync) running longer than this means a failing card or a
#: hung filesystem: the watchdog stops pinging and systemd restarts the gateway
WRITER_STALL = 20.0
#: batches a module change may seal beyond `seal_ahead` (it seals every reading judged so far);
#: past that the backlog is large, the broker far behind, and the change is refused
SWITCH_SLACK_BATCHES = 4
#: seconds between the INFO lines saying what the gateway does, when it runs by hand (under
#: systemd the STATUS= line says it, and the journal gets only the changes)
PROGRESS_INTERVAL = 60.0


def config_digest(cfg: Config) -> bytes:
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).digest()


class SpoolThread(ThreadPoolExecutor):
    """The spool's one thread; it tells since when its current job has been running."""

    def __init__(self) -> None:
        super().__init__(max_workers=1, thread_name_prefix="spool")
        self.busy_since: float | None = None

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        def timed() -> T:
            self.busy_since = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                self.busy_since = None

        return super().submit(timed)


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
        self.models = ModelStore(
            cfg.models.dir or cfg.spool.path.parent / "models", cfg.models.trusted_model_signers
        )
        self.models.load()
        self.chain = self._make_chain(cfg.modules)
        # What batches sealed from now on name (key 8). Changed only on the spool's thread,
        # right after the commit that sealed the readings the previous modules judged.
        self._entries = self.chain.batch_entries()
        self.clock = detect(cfg.clock.mode)
        self.executor = SpoolThread()
        u = cfg.uplink
        self.spool = Spool(
            cfg.spool.path,
            identity=ident,
            boot=self.boot,
            max_size=cfg.spool.max_size,
            batch_max_readings=u.batch_max_readings,
            batch_max_age=u.batch_max_age,
            seal_ahead=u.max_inflight * SEAL_AHEAD_PER_INFLIGHT,
            modules=lambda: self._entries,
            key_file=cfg.device.key_file,
        )
        # Nothing is sealed before the chain head the broker keeps was read
        # (gateway/device/head.py).
        self.spool.held = True
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
            password=config.read_password("uplink", u.password_file, u.password_env),
            health=self.health,
            backlog=self._backlog,
            birth=self._birth,
            on_ack=self.pipeline.acked,
            on_message=self._message,
            on_connect=self._connected,
            chain_head=head.Keeper(
                ident,
                boot=self.boot,
                spool=self.spool,
                in_spool=self._in_spool,
                anchored=self._anchored,
            ),
        )
        self.state = StateMirror(ident.device_id, cfg.device.name)
        self.report = HealthReport(
            device_id=ident.device_id, name=cfg.device.name, version=__version__
        )
        self._status: dict[str, bytes] = {}
        self._status_path = status.status_file(cfg.spool.path)
        # Written into the file: `status` takes it only for its own spool, while we run.
        self._status_head = json.dumps(
            {"pid": os.getpid(), "spool": status.spool_key(cfg.spool.path)}
        )[1:-1]
        self._status_ok: bool | None = None  # None: the directory is not prepared yet
        topics = self.uplink.topics
        self.uplink.subscriptions = [topics["attestation"]]
        if self.models.enabled:
            self.uplink.subscriptions.append(topics["model"])
        mon = cfg.monitor
        self._ha_seen: set[str] = set()  # this device's config topics the broker retains
        self._ha_sent: dict[str, bytes] = {}
        self._ha_task: asyncio.Task[None] | None = None
        if mon.homeassistant:
            self.uplink.subscriptions += [
                homeassistant.birth_topic(mon.discovery_prefix),
                *homeassistant.subscriptions(mon.discovery_prefix, ident.device_id),
            ]
        self._reload_lock = asyncio.Lock()
        self.taken = 0  # readings taken and judged since start (committed or not yet)
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
        self.taken += len(readings)
        self.pipeline.accept(readings)
        self.state.update(readings)
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

    async def _anchored(self) -> None:
        """The spool may seal: what waited for the chain head is sealed now."""
        await self.pipeline.commit()

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

    # --- what owners watch: state, health, messages to the gateway ----------------------------

    async def _message(self, topic: str, payload: bytes) -> None:
        topics = self.uplink.topics
        if topic == topics["model"] and self.models.enabled:
            from gateway.models.bundle import MAX_BUNDLE_BYTES

            if len(payload) > MAX_BUNDLE_BYTES:  # refused before it waits for anything
                too_big = Outcome(
                    "rejected", f"over the {MAX_BUNDLE_BYTES} byte limit", "malformed",
                    at=time.time(),
                )  # fmt: skip
                self.health.model_updates[too_big.result] += 1
                self.health.last_model_update = too_big.to_dict()
                await self.uplink.publish(topics["model/result"], too_big.to_json(), qos=1)
            elif payload:  # an empty retained message clears the topic; it is not a bundle
                result = await self._model_update(payload)
                await self.uplink.publish(topics["model/result"], result, qos=1, retain=True)
        elif topic == topics["attestation"]:
            found = read_attestation(payload, self.identity.did)
            if found is not None:
                self.health.attestation = found
        elif self.cfg.monitor.homeassistant:
            prefix = self.cfg.monitor.discovery_prefix
            if topic == homeassistant.birth_topic(prefix):
                if payload.strip() == b"online":  # Home Assistant (re)started: announce again
                    self._announce_soon()
            elif topic.startswith(prefix + "/") and topic.endswith("/config"):
                if payload:
                    self._ha_seen.add(topic)
                else:
                    self._ha_seen.discard(topic)

    # --- Home Assistant MQTT discovery --------------------------------------------------------

    def _discovery(self) -> dict[str, bytes]:
        return homeassistant.discovery(
            device_id=self.identity.device_id,
            name=self.cfg.device.name,
            version=__version__,
            prefix=self.cfg.uplink.topic_prefix,
            discovery_prefix=self.cfg.monitor.discovery_prefix,
            sensors=[
                homeassistant.Sensor(s.cfg.id, s.units, s.cfg.driver, s.cfg.interval)
                for s in self.sensors
            ],
            state_interval=self.cfg.monitor.state_interval,
        )

    def _announce_soon(self) -> None:
        if self._ha_task is None or self._ha_task.done():
            self._ha_task = asyncio.create_task(self._announce(), name="homeassistant")

    async def _announce(self, settle: float = 2.0) -> None:
        """Every entity's config, retained; then, once the broker delivered what it retains for
        this device, an empty retained config for each entity no longer produced (a dropped
        sensor), which makes Home Assistant remove it."""
        current = self._discovery()
        for topic, payload in current.items():
            if not await self.uplink.publish(topic, payload, qos=1, retain=True):
                return  # not connected: the next connect announces
        self._ha_sent = current
        await asyncio.sleep(settle)
        prefix = self.cfg.monitor.discovery_prefix
        device_id = self.identity.device_id
        for topic in homeassistant.stale(
            self._ha_seen, current, device_id=device_id, discovery_prefix=prefix
        ):
            if await self.uplink.publish(topic, b"", qos=1, retain=True):
                log.info("home assistant: removed %s (no longer configured)", topic)
                self._ha_seen.discard(topic)

    async def _connected(self) -> None:
        """Right after every (re)connect: the retained messages reflect now, not the past."""
        if self.cfg.monitor.homeassistant:
            self._announce_soon()
        await self._publish_state(force=True)
        await self._publish_health()

    async def _publish_state(self, *, force: bool = False) -> None:
        if force or self.state.changed:
            data = self.state.to_json()
            self._status["state"] = data
            await self.uplink.publish(self.uplink.topics["state"], data)
            await self._write_status()

    async def _publish_health(self) -> None:
        await self._read_depth()  # the chain position as of now, not up to a second old
        doc = self.report.build(
            self.health,
            modules=[(i.module_id, i.name, i.version, i.digest) for i in self.chain.info],
        )
        data = HealthReport.to_json(doc)
        self._status["health"] = data
        await self.uplink.publish(self.uplink.topics["health"], data)
        await self._write_status()

    async def _write_status(self) -> None:
        """`depin-gateway status` reads this, whether the gateway runs under systemd or was
        started by hand: in a runtime directory, on tmpfs wherever there is one
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

    def _remove_status(self) -> None:
        """At the end: a stopped gateway has no status (systemd removes its runtime directory
        too; a gateway run by hand leaves nothing in /tmp)."""
        if self._status_ok:
            with contextlib.suppress(OSError):
                self._status_path.unlink()

    async def _monitor(self) -> None:
        mon = self.cfg.monitor
        loop = asyncio.get_running_loop()
        next_state = next_health = loop.time()
        while True:
            try:
                next_state, next_health = await self._monitor_once(next_state, next_health)
            except Exception:  # what owners watch must never stop what they watch
                log.exception("state/health not published")
                next_state = next_health = loop.time() + mon.health_interval
            await asyncio.sleep(max(0.05, min(next_state, next_health) - loop.time()))

    async def _monitor_once(self, next_state: float, next_health: float) -> tuple[float, float]:
        mon = self.cfg.monitor
        now = asyncio.get_running_loop().time()
        if now >= next_state:
            next_state = now + mon.state_interval
            await self._publish_state()
        if now >= next_health:
            next_health = now + mon.health_interval
            await self._publish_health()
            # What a chip measures is known once it answered (a BMP280 in a BME280's place has
            # no humidity): announce again when the entities changed.
            if mon.homeassistant and self._ha_sent and self._discovery() != self._ha_sent:
                self._announce_soon()
        return next_state, next_health

    # --- systemd: READY, WATCHDOG, STATUS -----------------------------------------------------

    def status_line(self) -> str:
        h = self.health
        broker = "broker connected" if h.connected else "broker away"
        seq = "-" if h.last_seq is None else h.last_seq
        return f"{h.readings} readings, {h.queue_depth} queued, {broker}, last seq {seq}"

    def progress_line(self, new_readings: int, seconds: float) -> str:
        h = self.health
        broker = f"broker connected (MQTT {h.protocol})" if h.connected else "broker away"
        return (
            f"{broker}; {self.taken} readings since start, {new_readings} in the last "
            f"{seconds:.0f} s; {h.batches_acked} batches acknowledged; {h.queue_depth} "
            "readings queued"
        )

    async def _progress(self, interval: float | None) -> None:
        """One INFO line of what the gateway does, every `interval` seconds (None: never) and
        whenever the broker connection comes or goes, so that someone who started it by hand
        sees it work (or wait for the broker) rather than silence."""
        loop = asyncio.get_running_loop()
        h = self.health
        # The first connect is not news (the uplink says "connected to"); a broker that is not
        # there after a second is.
        connected = True
        since, readings = loop.time(), self.taken
        while True:
            # Once a second: the uplink has no hook for a lost connection, and a flag is cheap
            # to look at.
            await asyncio.sleep(1.0)
            now = loop.time()
            changed = h.connected != connected
            if changed or (interval is not None and now - since >= interval):
                log.info("%s", self.progress_line(self.taken - readings, now - since))
                connected = h.connected
                since, readings = now, self.taken

    def healthy(self) -> list[str]:
        """What is stuck right now (empty: healthy): a sensor task that did not come round in
        time (a hung driver), or one spool job running for longer than WRITER_STALL (a stuck
        writer; jobs merely queued behind a slow one do not count)."""
        now = asyncio.get_running_loop().time()
        stuck = [f"sensor {s.cfg.id}" for s in self.sensors if now > s.due_by]
        busy = self.executor.busy_since
        if busy is not None and time.monotonic() - busy > WRITER_STALL:
            stuck.append("spool writer")
        return stuck

    async def _systemd(self) -> None:
        # READY once the spool is open (run() did that), the uplink runs, and every sensor has
        # had its first read, good or failed: the unit is then really doing its job. Told the
        # moment the last of them is read, not at the next tick of a polling loop.
        await asyncio.gather(*(s.first_read.wait() for s in self.sensors))
        sdnotify.notify("READY=1", f"STATUS={self.status_line()}")
        watchdog = sdnotify.watchdog_interval()
        period = watchdog / 2 if watchdog else 10.0
        was_stuck: list[str] = []
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            # A fixed cadence: a ping every `period`, however long the checks take.
            due += period
            await asyncio.sleep(max(0.0, due - loop.time()))
            stuck = self.healthy()
            if stuck != was_stuck:
                if stuck:
                    log.error("stalled: %s; no watchdog ping until it recovers", ", ".join(stuck))
                else:
                    log.info("recovered: watchdog pings again")
                was_stuck = stuck
            status = self.status_line() + (f"; STALLED: {', '.join(stuck)}" if stuck else "")
            fields = [f"STATUS={status}"]
            if watchdog and not stuck:
                fields.insert(0, "WATCHDOG=1")
            sdnotify.notify(*fields)

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
            await self._read_depth()

    async def _read_depth(self) -> None:
        st = await self._in_spool(self.spool.stats)
        self.health.queue_depth = st.pending + st.sealed_readings
        self.health.last_seq = st.next_seq - 1 if st.next_seq > 0 else None
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
                chain = self._make_chain(new_cfg.modules)
            except ConfigError as e:
                for problem in e.problems:
                    log.error("reload refused: %s", problem)
                return False
            except Exception as e:  # a module that cannot start must not take the old chain
                log.error("reload refused: a module failed to start: %s", e)
                return False
            changed = [
                name
                for name in (
                    "device",
                    "spool",
                    "uplink",
                    "clock",
                    "log",
                    "models",
                    "monitor",
                    "sensors",
                )
                if getattr(new_cfg, name) != getattr(self.cfg, name)
            ]
            if changed:
                log.warning("reload: changes to %s take effect at the next start", changed)
            if new_cfg.modules == self.cfg.modules:
                log.info("reload: modules unchanged")
                return False
            previous = self.chain

            def use(c: ModuleChain) -> None:
                self.chain = c
                for sensor in self.sensors:
                    sensor.chain = c

            if not await self._switch(lambda: use(chain), lambda: use(previous)):
                return False
            self.cfg = dataclasses.replace(self.cfg, modules=new_cfg.modules)
            self.health.reloads += 1
            log.info(
                "reload: modules now %s",
                ", ".join(f"{i.module_id} ({i.name} {i.version})" for i in chain.info) or "none",
            )
            self.uplink.announce()
            return True

    async def _switch(self, apply: Callable[[], None], undo: Callable[[], None]) -> bool:
        """Change the modules (`apply`, synchronous) so that every batch names the modules that
        judged its records: the readings judged so far are sealed under the old list in the
        same step, on the spool's thread, and later batches name the new one.

        Refused (False, nothing changed) when the spool cannot seal all of them now: with the
        broker behind, sealing is held back (`seal_ahead`), or not started yet (the chain head),
        and readings left pending would be sealed later under the wrong list. If the sealing
        commit fails, `undo` puts the old modules back."""
        if self.spool.held:
            log.warning(
                "module change refused: nothing is sealed before the chain head on the broker "
                "was read, so the readings judged so far could not be sealed under the modules "
                "that judged them; try again once the broker was reached"
            )
            return False
        st = await self._in_spool(self.spool.stats)
        bmr = self.cfg.uplink.batch_max_readings
        room = max(0, self.spool.seal_ahead - st.sealed) + SWITCH_SLACK_BATCHES
        waiting = st.pending + self.pipeline.buffered
        if waiting > room * bmr:
            log.warning(
                "module change refused: %d readings wait for sealing, %d sealed batches for "
                "the broker; try again once it has caught up",
                waiting,
                st.sealed,
            )
            return False
        old = self.chain.batch_entries()
        apply()  # no await from here to the commit taking the buffer: nothing judged between
        new = self.chain.batch_entries()
        try:
            await self.pipeline.commit(seal_all=True, then=lambda: setattr(self, "_entries", new))
        except Exception:
            undo()
            self._entries = old
            raise
        return True

    # --- models: configured and updated over MQTT ---------------------------------------------

    def _make_chain(self, configs: Sequence[ModuleConfig]) -> ModuleChain:
        """The chain of `configs`, with `tflite` modules running their model's installed update
        where there is one, and the shadow models beside it."""
        resolved = []
        for mc in configs:
            inst = None
            if mc.kind == "tflite":
                inst = self.models.installed["active"].get(_model_name(mc))
            if inst is not None:
                opts = {**mc.options, "model": str(inst.manifest), "models_dir": None}
                mc = dataclasses.replace(mc, options=MappingProxyType(opts))
            resolved.append(mc)
        chain = ModuleChain.from_config(resolved, health=self.health)
        for inst in self.models.installed["shadow"].values():
            self._start_shadow(chain, inst, self._shadow_module(chain, inst))
        self._note_models(chain)
        return chain

    def _start_shadow(self, chain: ModuleChain, inst: Installed, module: DetectionModule) -> None:
        """Run `module` in shadow mode from the next reading, with fresh figures in health.
        On the event loop's thread, where the chain updates those figures."""
        chain.shadows[inst.name] = module
        if self.health.shadow.get(inst.name, {}).get("sha256") != inst.sha256:
            # A new trial starts its figures afresh; the same one (a SIGHUP) keeps counting.
            self.health.shadow.pop(inst.name, None)
        self.health.shadow_stats(inst.name).update(version=inst.version, sha256=inst.sha256)

    def _shadow_module(self, chain: ModuleChain, inst: Installed) -> DetectionModule:
        """Load a shadow model (no side effects: may run in a worker thread)."""
        from gateway.modules.tflite import TFLiteModule

        # Judged like the active model of that name would be: same threshold scale.
        scale = next(
            (
                m.options.get("threshold_scale", 1.0)
                for m in chain.modules
                if isinstance(m, TFLiteModule) and m.manifest.name == inst.name
            ),
            1.0,
        )
        return TFLiteModule(
            module_id=f"shadow:{inst.name}",
            options={"model": str(inst.manifest), "threshold_scale": scale},
        )

    def _note_models(self, chain: ModuleChain) -> None:
        # Not imported when no model module was ever loaded: then none can be in the chain,
        # and a gateway without models is spared the module's import at start.
        tflite = sys.modules.get("gateway.modules.tflite")
        models: dict[str, dict[str, Any]] = {}
        for m in chain.modules:
            if tflite is not None and isinstance(m, tflite.TFLiteModule):
                man = m.manifest
                inst = self.models.installed["active"].get(man.name)
                entry = models.setdefault(
                    man.name,
                    {
                        "version": man.version,
                        "sha256": man.sha256,
                        "source": "update" if inst and inst.sha256 == man.sha256 else "config",
                        "modules": [],
                    },
                )
                entry["modules"].append(m.module_id)
        self.health.models = models
        for name in list(self.health.shadow):
            if name not in chain.shadows:
                del self.health.shadow[name]

    def _trial(self, manifest: Path) -> None:
        from gateway.modules.tflite import TFLiteModule

        TFLiteModule(module_id="trial", options={"model": str(manifest)})

    async def _model_update(self, data: bytes) -> bytes:
        """A bundle arrived on the model topic: the outcome, as published on model/result."""
        async with self._reload_lock:
            try:
                outcome, inst = await asyncio.to_thread(self.models.receive, data, self._trial)
                if inst is None and outcome.result == "unchanged" and outcome.mode == "active":
                    # Installed before but not switched in (the broker was behind then).
                    inst = self.models.installed["active"].get(outcome.name)
                    running = self.health.models.get(outcome.name, {}).get("sha256")
                    if inst is None or running in (None, inst.sha256):
                        inst = None
                if inst is not None:
                    outcome = await self._run_installed(inst, outcome)
            except Exception as e:  # whatever happens, the running chain stays as it was
                log.exception("model update failed")
                outcome = Outcome("rejected", f"failed: {e}", "error", at=time.time())
            self.health.model_updates[outcome.result] += 1
            self.health.last_model_update = outcome.to_dict()
            if outcome.result == "rejected":
                log.warning("model update rejected (%s): %s", outcome.kind, outcome.reason)
            else:
                log.info("model update %s: %s", outcome.result, outcome.reason)
            return outcome.to_json()

    async def _run_installed(self, inst: Installed, outcome: Outcome) -> Outcome:
        from gateway.modules.tflite import TFLiteModule

        chain = self.chain
        if inst.mode == "shadow":
            shadow = await asyncio.to_thread(self._shadow_module, chain, inst)
            active = [
                m
                for m in chain.modules
                if isinstance(m, TFLiteModule) and m.manifest.name == inst.name
            ]
            if isinstance(shadow, TFLiteModule) and active:
                # A copy of the active model's windows: the shadow judges from the next reading
                # on, and the two never write into one ring.
                _carry_windows(active[0], shadow, copy=True)
            self._start_shadow(chain, inst, shadow)
            return outcome
        targets = [
            (i, m)
            for i, m in enumerate(chain.modules)
            if isinstance(m, TFLiteModule) and m.manifest.name == inst.name
        ]

        def build() -> list[TFLiteModule]:
            out = []
            for _, old in targets:
                opts = {**old.options, "model": str(inst.manifest), "models_dir": None}
                new = TFLiteModule(module_id=old.module_id, options=opts)
                out.append(new)
            return out

        modules = await asyncio.to_thread(build)
        if not targets:
            return dataclasses.replace(
                outcome,
                reason=f"{outcome.reason}; no [[module]] of kind tflite runs a model named "
                f"{inst.name!r} yet",
            )

        def swap(new: Sequence[DetectionModule]) -> None:
            for (i, _), module in zip(targets, new, strict=True):
                chain.swap(i, module)

        for (_, old), module in zip(targets, modules, strict=True):
            _carry_windows(old, module, copy=False)  # no warm-up for the new model
        if not await self._switch(lambda: swap(modules), lambda: swap([m for _, m in targets])):
            return dataclasses.replace(
                outcome,
                reason=f"{outcome.reason}, installed; it runs from the next start, or resend the "
                "bundle once the broker has caught up (the readings judged so far could not be "
                "sealed now)",
            )
        chain.shadows.pop(inst.name, None)
        self._note_models(chain)
        self.uplink.announce()
        return outcome

    async def run(self, stop: asyncio.Event) -> None:
        await self.open()
        try:
            async with asyncio.TaskGroup() as tg:
                uplink = tg.create_task(self.uplink.run(), name="uplink")
                workers = [
                    tg.create_task(self.pipeline.run(), name="pipeline"),
                    tg.create_task(self._poll_clock(), name="clock"),
                    tg.create_task(self._update_depth(), name="health"),
                    tg.create_task(self._monitor(), name="monitor"),
                ]
                systemd = bool(os.environ.get("NOTIFY_SOCKET"))
                if systemd:
                    workers.append(tg.create_task(self._systemd(), name="systemd"))
                # Under systemd, STATUS= says it all the time; the journal gets the changes.
                interval = None if systemd else PROGRESS_INTERVAL
                workers.append(tg.create_task(self._progress(interval), name="progress"))
                workers += [
                    tg.create_task(s.run(), name=f"sensor-{s.cfg.id}") for s in self.sensors
                ]
                await stop.wait()
                await self._shutdown(workers, uplink)
        finally:
            self._remove_status()
            await self._in_spool(self.spool.close)
            self.executor.shutdown(wait=True)

    async def _shutdown(
        self, workers: list[asyncio.Task[None]], uplink: asyncio.Task[None]
    ) -> None:
        log.info("stopping: sealing and flushing (at most %.0f s)", self.shutdown_timeout)
        sdnotify.notify("STOPPING=1", "STATUS=stopping: sealing and flushing")
        await asyncio.gather(*(_cancel_until_done(t) for t in workers))
        await self.pipeline.commit(force_seal=True)
        if self.spool.held:
            st = await self._in_spool(self.spool.stats)
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
        await self.pipeline.commit()  # forget what was acknowledged meanwhile
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


def _carry_windows(old: Any, new: Any, *, copy: bool) -> None:
    """Give a new model module the windows the old one has filled, when they mean the same."""
    if (new.window, new.quantity) == (old.window, old.quantity):
        new.state = copy_module.deepcopy(old.state) if copy else old.state


def _model_name(mc: ModuleConfig) -> str:
    """The name of the model a `tflite` module is configured with (its manifest's name)."""
    from gateway.modules.tflite import manifest_path

    model = str(mc.options.get("model", ""))
    folder = mc.options.get("models_dir")
    path = manifest_path(model, None if folder is None else Path(folder))
    try:
        name = json.loads(path.read_text(encoding="utf-8")).get("name")
    except (OSError, ValueError, AttributeError):
        name = None
    return str(name) if isinstance(name, str) and name else Path(model).stem


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
        first: BaseException = eg
        while isinstance(first, BaseExceptionGroup):  # raised in a task of a task group
            first = first.exceptions[0]
        raise first from None
    return 0
