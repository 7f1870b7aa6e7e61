"""`depin-gateway demo`: the whole pipeline on one machine, with nothing else installed.

An embedded MQTT broker (amqtt, pure Python, MQTT 3.1.1) on a free loopback port - or a real
broker given with `--broker URL` -, a gateway with simulated sensors and one injected fault, and
a verifier subscribed next to it that checks every batch the broker delivers. A one-line summary
follows them live until `--duration` runs out or Ctrl-C; then the gateway seals and flushes,
the verifier catches up and a final summary says whether every acknowledged reading verified.

amqtt is imported here only, so the daemon never loads it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import secrets
import shutil
import signal
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiomqtt

from gateway import config, identity
from gateway.config import Config
from gateway.daemon import Gateway
from gateway.errors import GatewayError, UplinkError
from gateway.health import Health
from gateway.verify import Finding, Verifier

log = logging.getLogger("gateway.demo")

PREFIX = "depin/v1"
SHUTDOWN_TIMEOUT = 5.0  # seconds the gateway waits for the last PUBACKs when stopping
# The gateway's uplink protocol against the embedded broker. amqtt speaks MQTT 3.1.1 only and
# does not answer an MQTT 5 CONNECT: "auto" would fall back only after its CONNACK timeout, so
# the demo says what it knows (tests/test_uplink_fallback.py covers the fallback itself).
EMBEDDED_PROTOCOL = "3.1.1"
CATCH_UP = 5.0  # seconds the verifier may take to receive the last acknowledged batches
CONNECT_TIMEOUT = 10.0
TTY_EVERY = 0.5
LINE_EVERY = 2.0
_BATCH_KINDS = frozenset({"valid", "gap", "reordered"})  # a batch accepted into the chain


# --- the embedded broker ----------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _QuietV5Refusal(logging.Filter):
    """amqtt warns each time it refuses an MQTT 5 CONNECT, which the gateway's "auto" uplink
    sends first on every connect; expected here, so not shown."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith("Invalid connection from") or "Invalid protocol from" in msg)


async def start_embedded_broker() -> tuple[Any, int]:
    """An amqtt broker on 127.0.0.1 and a free port: anonymous, no $SYS topics, no packet or
    event logging plug-ins."""
    from amqtt.broker import Broker
    from amqtt.errors import BrokerError

    last: Exception | None = None
    for _ in range(5):  # the free port may be taken between probing and binding
        port = _free_port()
        broker = Broker(
            {
                "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
                "plugins": {
                    "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
                },
            }
        )
        try:
            await broker.start()
        except BrokerError as e:
            last = e
            continue
        return broker, port
    raise GatewayError(f"cannot start the embedded MQTT broker: {last}")


# --- the work dir and the gateway's configuration ---------------------------------------------


_HEAD = """\
[device]
name = "demo"
key_file = "device.key"

[spool]
path = "spool.db"
commit_interval = "1 s"

[uplink]
url = "{url}"
topic_prefix = "{prefix}"
protocol = "{protocol}"
batch_max_age = "2 s"
reconnect_max = "5 s"
insecure = {insecure}
"""

# One sensor is simulated with a physically impossible value now and then (the injected fault
# the range module must flag); the others are real drivers talking to byte-level chip emulators.
_FAULTY = """
[[sensor]]
id = "outdoor"
driver = "simulated"
interval = "0.5 s"
kind = "climate"
seed = {seed}
faults = ["range"]
fault_every = 6
"""

_CHIPS = """
[[sensor]]
id = "climate"
driver = "bme280"
interval = "1 s"
bus = "emulated"
address = 0x76

[[sensor]]
id = "co2"
driver = "scd4x"
interval = "5 s"
bus = "emulated"
variant = "scd41"
mode = "periodic"

[[sensor]]
id = "pm"
driver = "sds011"
interval = "1 s"
port = "{pm_port}"
warmup = "2 s"
duty_cycle = false
"""

_SIMULATED = """
[[sensor]]
id = "air"
driver = "simulated"
interval = "1 s"
kind = "pm"
seed = {seed}

[[sensor]]
id = "co2"
driver = "simulated"
interval = "1 s"
kind = "co2"
seed = {seed}
"""

_MODULES = """
[[module]]
id = "physics"
kind = "ranges"
"""


def config_text(
    url: str,
    *,
    seed: int,
    protocol: str = "auto",
    insecure: bool = False,
    pm_port: str | None = None,
) -> str:
    """The demo gateway: with `pm_port`, a BME280 and an SCD41 on the emulated I2C bus and an
    SDS011 emulated on that serial port, all read by their real drivers; without, simulated
    sensors only. Either way one simulated sensor injects out-of-range values (about one read
    in six) and batches are sealed every 2 s."""
    text = _HEAD.format(
        url=url, prefix=PREFIX, protocol=protocol, insecure="true" if insecure else "false"
    )
    text += _FAULTY.format(seed=seed)
    text += _CHIPS.format(pm_port=pm_port) if pm_port else _SIMULATED.format(seed=seed)
    return text + _MODULES


def _needs_insecure(url: str) -> bool:
    """A plain mqtt:// broker off this machine: the demo's readings are simulated and signed
    by a throwaway key, so sending them unencrypted is allowed (and said in the summary)."""
    from urllib.parse import urlsplit

    u = urlsplit(url if "://" in url else "mqtt://" + url)
    if u.scheme not in ("mqtt", "tcp"):
        return False
    host = (u.hostname or "localhost").lower()
    if host == "localhost":
        return False
    import ipaddress

    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def prepare(
    workdir: Path, url: str, *, seed: int, protocol: str = "auto", pm_port: str | None = None
) -> tuple[identity.Identity, Config]:
    """Key (created unless the work dir has one) and configuration (written to demo.toml)."""
    workdir.mkdir(parents=True, exist_ok=True)
    key = workdir / "device.key"
    ident = identity.load(key) if key.exists() else identity.generate(key)
    text = config_text(
        url, seed=seed, protocol=protocol, insecure=_needs_insecure(url), pm_port=pm_port
    )
    path = workdir / "demo.toml"
    path.write_text(text)
    return ident, config.loads(text, source=str(path), base_dir=workdir)


# --- the verifier next to the gateway ---------------------------------------------------------


@dataclass
class Watch:
    """Feeds every batch and birth message the broker delivers to a Verifier and counts."""

    verifier: Verifier
    device_id: str
    batches: int = 0
    readings: int = 0
    births: int = 0
    duplicates: int = 0
    others: int = 0  # messages of other devices (on a shared broker): not ours to judge
    forged: list[Finding] = field(default_factory=list)
    protocol: str = ""
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def feed(self, topic: str, payload: bytes) -> Finding:
        f = self.verifier.check(payload, source=topic)
        parts = topic.split("/")
        on_other_topic = len(parts) >= 2 and parts[-2] != self.device_id
        if f.kind == "unknown-device" and on_other_topic:
            self.others += 1
        elif f.forged:
            self.forged.append(f)
        elif f.kind in _BATCH_KINDS:
            self.batches += 1
            self.readings += f.records
        elif f.kind == "birth":
            self.births += 1
        elif f.kind == "duplicate":
            self.duplicates += 1
        self.changed.set()
        return f

    async def run(self, host: str, port: int, *, tls: bool, protocols: list[str]) -> None:
        """Subscribe and check until cancelled; reconnects if the broker goes away after the
        first subscription, raises UplinkError if it never could subscribe."""
        ident = f"dg-demo-verifier-{secrets.token_hex(4)}"
        while True:
            try:
                await self._session(host, port, ident, tls=tls, protocols=protocols)
            except aiomqtt.MqttError as e:
                if not self.subscribed.is_set():
                    raise UplinkError(f"verifier: broker {host}:{port}: {e}") from e
                log.warning("verifier: broker %s:%s: %s; reconnecting", host, port, e)
            await asyncio.sleep(1.0)

    async def _session(
        self, host: str, port: int, ident: str, *, tls: bool, protocols: list[str]
    ) -> None:
        last: aiomqtt.MqttError | None = None
        for proto in protocols:
            v5 = proto == "5"
            client = aiomqtt.Client(
                host,
                port,
                identifier=ident,
                protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
                clean_session=None if v5 else True,
                tls_params=aiomqtt.TLSParameters() if tls else None,
                timeout=CONNECT_TIMEOUT,
            )
            try:
                async with client:
                    self.protocol = proto
                    for kind in ("batch", "birth"):
                        await client.subscribe(f"{PREFIX}/+/{kind}", qos=1)
                    self.subscribed.set()
                    async for msg in client.messages:
                        payload = msg.payload
                        data = bytes(payload) if isinstance(payload, bytes | bytearray) else b""
                        self.feed(str(msg.topic), data)
                return
            except aiomqtt.MqttError as e:
                if self.protocol == proto:  # connected, then lost: not a protocol problem
                    raise
                last = e
        assert last is not None
        raise last


# --- output -----------------------------------------------------------------------------------


def status_line(t: float, h: Health, w: Watch, *, queue: int | None = None) -> str:
    return (
        f"t={t:.0f}s readings {h.readings} | sealed {h.batches_sealed} | "
        f"acked {h.batches_acked} | verified {w.readings} in {w.batches} batches | "
        f"flagged {h.flagged} | forged {len(w.forged)} | "
        f"queue {h.queue_depth if queue is None else queue}"
    )


class _Live:
    """The one-line summary: rewritten in place on a terminal, else a new line every 2 s."""

    def __init__(self, out: TextIO, h: Health, w: Watch) -> None:
        self.out, self.h, self.w = out, h, w
        self.tty = out.isatty()
        self.started = time.monotonic()
        self.last = ""

    def show(self, *, final: bool = False) -> None:
        t = time.monotonic() - self.started
        # after the stop the daemon no longer refreshes its queue depth
        queue = max(0, self.h.readings - self.h.readings_acked) if final else None
        line = status_line(t, self.h, self.w, queue=queue)
        if self.tty:
            self.out.write(f"\r{line}\x1b[K" + ("\n" if final else ""))
        elif line != self.last:
            self.out.write(line + "\n")
        self.last = line
        self.out.flush()

    async def run(self) -> None:
        every = TTY_EVERY if self.tty else LINE_EVERY
        while True:
            await asyncio.sleep(every)
            self.show()


@dataclass
class Result:
    did: str
    broker: str
    embedded: bool
    uplink_protocol: str
    verifier_protocol: str
    workdir: Path
    kept: bool
    insecure: bool
    seconds: float
    health: Health
    watch: Watch

    @property
    def ok(self) -> bool:
        return not self.watch.forged and self.watch.readings > 0

    def render(self) -> str:
        h, w = self.health, self.watch
        kind = "embedded amqtt" if self.embedded else "external"
        note = ", plain text to another machine" if self.insecure else ""
        up, down = self.uplink_protocol or "-", self.verifier_protocol or "-"
        rows = [
            ("device", self.did),
            ("broker", f"{self.broker} ({kind}{note})"),
            ("protocol", f"gateway MQTT {up}, verifier MQTT {down}"),
            ("work dir", f"{self.workdir} ({'kept' if self.kept else 'removed'})"),
            ("ran", f"{self.seconds:.1f} s"),
            ("readings", str(h.readings)),
            ("flagged", f"{h.flagged} (by the modules; fault injected: range on outdoor)"),
            ("sealed", f"{h.batches_sealed} batches"),
            ("acknowledged", f"{h.readings_acked} readings in {h.batches_acked} batches"),
            ("verified", f"{w.readings} readings in {w.batches} batches"),
            ("forged", str(len(w.forged))),
            ("births", str(w.births)),
        ]
        for sensor, counts in sorted(h.driver_counters.items()):
            if counts:
                seen = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                rows.append((f"{sensor} driver", f"counted {seen}"))
        if w.duplicates:
            rows.append(("duplicates", str(w.duplicates)))
        if w.others:
            rows.append(("other devices", f"{w.others} messages (not checked)"))
        if h.batches_sealed > h.batches_acked or h.readings > h.readings_acked:
            where = "kept in the spool" if self.kept else "lost with the temp dir"
            rows.append(("unsent", f"{max(0, h.readings - h.readings_acked)} readings ({where})"))
        lines = ["", "depin-gateway demo summary"]
        lines += [f"  {k:<14}{v}" for k, v in rows]
        for f in w.forged[:10]:
            lines.append(f"  ! {f.source}: {f.kind} seq={f.seq} {f.detail}")
        if not self.ok:
            verdict = "FAILED: forged batches" if w.forged else "FAILED: nothing verified"
        elif w.readings >= h.readings_acked:
            verdict = "OK: every acknowledged reading verified"
        else:
            missing = h.readings_acked - w.readings
            verdict = f"OK, but {missing} acknowledged readings did not reach the verifier"
        lines.append(f"  {'result':<14}{verdict}")
        return "\n".join(lines)


# --- running ----------------------------------------------------------------------------------


def _setup_logging() -> None:
    # Gateway INFO logs would clutter the live line: warnings and errors only, on stderr.
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    for name in ("gateway", "amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.WARNING)
    logging.getLogger("amqtt.broker").addFilter(_QuietV5Refusal())


async def _wait_subscribed(watch: Watch, task: asyncio.Task[None]) -> None:
    waiter = asyncio.create_task(watch.subscribed.wait())
    try:
        done, _ = await asyncio.wait(
            {waiter, task}, timeout=CONNECT_TIMEOUT + 5, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        waiter.cancel()
    if task in done:
        task.result()  # raises UplinkError
    if not watch.subscribed.is_set():
        raise UplinkError("verifier: no subscription in time")


async def _catch_up(watch: Watch, health: Health, timeout: float) -> None:
    """Give the broker time to deliver the last acknowledged batches to the verifier."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while watch.readings < health.readings_acked and loop.time() < deadline:
        watch.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(watch.changed.wait(), max(0.0, deadline - loop.time()))


def _start_emulators(workdir: Path, seed: int) -> Any:
    """Byte-level chip emulators for the real drivers: the emulated I2C bus (BME280, SCD41,
    sharing one simulated air) and an SDS011 on a pseudo-terminal that now and then sends
    garbage and frames with bad checksums, which its driver must resynchronise over and never
    pass on as readings."""
    from drivers.emulators import i2c
    from drivers.emulators.pty import PtyServer
    from drivers.emulators.sds011 import SDS011Chip

    i2c.reset(seed=seed)
    workdir.mkdir(parents=True, exist_ok=True)
    chip = SDS011Chip(seed=seed, warmup=2.0)
    chip.fault_rates = {"garbage": 0.05, "bad_checksum": 0.05}
    return PtyServer(chip, link=workdir / "ttyUSB0").start()


async def run_demo(
    *,
    workdir: Path,
    kept: bool,
    broker_url: str | None,
    duration: float | None,
    seed: int,
    out: TextIO,
    simulated: bool = False,
) -> Result:
    loop = asyncio.get_running_loop()
    broker: Any = None
    pm_chip: Any = None
    if broker_url is None:
        broker, port = await start_embedded_broker()
        url = f"mqtt://127.0.0.1:{port}"
    else:
        url = broker_url
    tasks: list[asyncio.Task[None]] = []
    try:
        protocol = EMBEDDED_PROTOCOL if broker is not None else "auto"
        pm_port = None
        if not simulated:
            pm_chip = _start_emulators(workdir, seed)
            pm_port = pm_chip.path
        ident, cfg = prepare(workdir, url, seed=seed, protocol=protocol, pm_port=pm_port)
        u = cfg.uplink
        gw = Gateway(cfg, ident=ident, shutdown_timeout=SHUTDOWN_TIMEOUT)
        watch = Watch(Verifier(allowed_dids=[ident.did]), ident.device_id)
        # amqtt speaks MQTT 3.1.1 only; elsewhere try MQTT 5 first, as the gateway does.
        protocols = ["3.1.1"] if broker is not None else ["5", "3.1.1"]
        verifier_task = asyncio.create_task(
            watch.run(u.host, u.port, tls=u.tls, protocols=protocols), name="demo-verifier"
        )
        tasks.append(verifier_task)
        await _wait_subscribed(watch, verifier_task)

        stop = asyncio.Event()

        def on_signal() -> None:
            stop.set()
            for sig in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C interrupts at once
                loop.remove_signal_handler(sig)

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        if duration is not None:
            loop.call_later(duration, stop.set)

        live = _Live(out, gw.health, watch)
        ticker = asyncio.create_task(live.run(), name="demo-live")
        tasks.append(ticker)
        try:
            await gw.run(stop)
        except* GatewayError as eg:
            raise eg.exceptions[0] from None
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        seconds = time.monotonic() - live.started
        await _catch_up(watch, gw.health, CATCH_UP)
        ticker.cancel()
        live.show(final=True)
        return Result(
            did=ident.did,
            broker=url,
            embedded=broker is not None,
            uplink_protocol=gw.health.protocol,
            verifier_protocol=watch.protocol,
            workdir=workdir,
            kept=kept,
            insecure=u.insecure,
            seconds=seconds,
            health=gw.health,
            watch=watch,
        )
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if pm_chip is not None:
            pm_chip.stop()
        if broker is not None:
            with contextlib.suppress(Exception):
                await broker.shutdown()


def main(args: argparse.Namespace) -> int:
    _setup_logging()
    kept = args.dir is not None
    workdir = Path(args.dir) if kept else Path(tempfile.mkdtemp(prefix="depin-demo-"))
    out = sys.stdout
    try:
        result = asyncio.run(
            run_demo(
                workdir=workdir,
                kept=kept,
                broker_url=args.broker,
                duration=args.duration,
                seed=args.seed,
                out=out,
                simulated=getattr(args, "simulated", False),
            )
        )
    finally:
        if not kept:
            shutil.rmtree(workdir, ignore_errors=True)
    print(result.render(), file=out, flush=True)
    return 0 if result.ok else 1
