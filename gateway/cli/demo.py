"""`depin-gateway demo`: the whole pipeline on one machine, with nothing else installed.

An embedded MQTT broker on a free loopback port - amqtt (pure Python, MQTT 3.1.1) when it is
installed (`depin-gateway[demo]`), else a private mosquitto started for the demo - or a real
broker given with `--broker URL`; a gateway with emulated and simulated sensors and one injected
fault, and a verifier subscribed next to it that checks every batch the broker delivers. What
starts is listed first; then a one-line summary follows them live until `--duration` runs out
or Ctrl-C; then the gateway seals and flushes, the verifier catches up and a final summary says
whether every acknowledged reading verified. On a given broker the demo's device leaves nothing
retained behind (no ghost device in Home Assistant or on a dashboard).

amqtt is imported here only, so the daemon never loads it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import logging
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import aiomqtt

from gateway.config import settings as config
from gateway.config.settings import Config, SensorConfig
from gateway.core.errors import GatewayError, UplinkError
from gateway.core.health import Health
from gateway.device.daemon import Gateway
from gateway.monitor import homeassistant
from gateway.mqtt import url as mqtt_url
from gateway.mqtt.backoff import Backoff
from gateway.mqtt.connect import ClientSettings, make_client
from gateway.mqtt.subscribe import Lost, subscribe_forever
from gateway.wire import identity, payloads
from gateway.wire.verify import LINKED, Examined, Finding, Verifier, examine

log = logging.getLogger("gateway.demo")

PREFIX = "depin/v1"
SHUTDOWN_TIMEOUT = 5.0  # seconds the gateway waits for the last PUBACKs when stopping
# The gateway's uplink protocol against the embedded amqtt broker. amqtt speaks MQTT 3.1.1 only
# and does not answer an MQTT 5 CONNECT: "auto" would fall back only after its CONNACK timeout,
# so the demo says what it knows (tests/integration/test_uplink_fallback.py covers the
# fallback itself).
EMBEDDED_PROTOCOL = "3.1.1"
CATCH_UP = 5.0  # seconds the verifier may take to receive the last acknowledged batches
CONNECT_TIMEOUT = 10.0
#: the verifier's reconnect backoff (a broker lost after its first subscription)
RECONNECT_MIN, RECONNECT_MAX = 0.5, 5.0
TTY_EVERY = 0.5
LINE_EVERY = 2.0
#: the live line never gets wider than this, so it stays one line on an 80-column terminal
#: (a line of exactly 80 columns wraps on some terminals before the carriage return)
LIVE_WIDTH = 79
#: how long the broker may take to deliver this device's retained messages after a subscribe
RETAINED_SETTLE = 0.5
RETAINED_MAX = 3.0
MOSQUITTO_PATHS = ("mosquitto", "/usr/sbin/mosquitto")
NO_BROKER = (
    "no MQTT broker for the demo: install depin-gateway[demo] (the embedded amqtt broker) or "
    "mosquitto, or pass --broker mqtt://HOST:PORT"
)


# --- the broker -------------------------------------------------------------------------------


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
    event logging plug-ins. ImportError when amqtt is not installed."""
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


def mosquitto_binary() -> str | None:
    """The mosquitto executable on PATH or where Debian puts it (/usr/sbin is not on a normal
    user's PATH), or None."""
    for cand in MOSQUITTO_PATHS:
        found = shutil.which(cand)
        if found:
            return found
    return None


class PrivateMosquitto:
    """A mosquitto of the demo's own: loopback only, anonymous, nothing persisted, its
    configuration and log in a temp dir that goes with it."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="depin-demo-mosquitto-"))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def _config(self, port: int) -> Path:
        conf = self.dir / "mosquitto.conf"
        conf.write_text(
            f"listener {port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence false\n"
            # Started as root, mosquitto would switch to its own user, which cannot write the
            # log here: it stays who we are.
            f"user {getpass.getuser()}\n"
            f"log_dest file {self.dir / 'mosquitto.log'}\n"
            "log_type error\nlog_type warning\n"
        )
        return conf

    def _log_tail(self) -> str:
        try:
            lines = (self.dir / "mosquitto.log").read_text(errors="replace").splitlines()
        except OSError:
            return "no log"
        return lines[-1].strip() if lines else "no log"

    async def start(self, timeout: float = 10.0) -> int:
        last = ""
        for _ in range(5):  # the free port may be taken between probing and binding
            port = _free_port()
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(self._config(port))],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    await asyncio.sleep(0.05)
                    continue
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
                self.port = port
                return port
            last = self._log_tail()
            self.stop()
        raise GatewayError(f"cannot start mosquitto ({self.binary}) for the demo: {last}")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@dataclass
class DemoBroker:
    """The broker the demo runs against, however it came about."""

    url: str
    kind: str  # "embedded amqtt", "own mosquitto" (started for the demo) or "external"
    detail: str  # what the start-up listing says about it
    uplink_protocol: str  # what the gateway is configured with
    verifier_protocol: str  # "auto" (MQTT 5, else 3.1.1) or "3.1.1"
    stop: Callable[[], Awaitable[None]]

    @property
    def embedded(self) -> bool:
        return self.kind != "external"


async def _nothing() -> None:
    return None


def _amqtt_installed() -> bool:
    try:
        import amqtt.broker  # noqa: F401
    except ImportError:
        return False
    return True


async def start_broker(url: str | None) -> DemoBroker:
    """The given broker, else amqtt if it is installed, else a private mosquitto; GatewayError
    saying what to install when there is neither."""
    if url is not None:
        given = mqtt_url.parse(url, where="--broker", bare=True)
        return DemoBroker(
            url=given.label,  # in full: it goes into the gateway's configuration
            kind="external",
            detail=f"{url} (given with --broker)",
            uplink_protocol="auto",
            verifier_protocol="auto",
            stop=_nothing,
        )
    if _amqtt_installed():
        broker, port = await start_embedded_broker()

        async def shutdown() -> None:
            with contextlib.suppress(Exception):
                await broker.shutdown()

        url = f"mqtt://127.0.0.1:{port}"
        return DemoBroker(
            url=url,
            kind="embedded amqtt",
            detail=f"{url}, embedded amqtt (MQTT 3.1.1)",
            uplink_protocol=EMBEDDED_PROTOCOL,
            verifier_protocol=EMBEDDED_PROTOCOL,
            stop=shutdown,
        )
    binary = mosquitto_binary()
    if binary is None:
        raise GatewayError(NO_BROKER)
    mosq = PrivateMosquitto(binary)
    try:
        port = await mosq.start()
    except BaseException:
        mosq.remove()
        raise

    async def stop() -> None:
        await asyncio.to_thread(mosq.remove)

    url = f"mqtt://127.0.0.1:{port}"
    return DemoBroker(
        url=url,
        kind="own mosquitto",
        detail=f"{url}, a mosquitto of its own ({binary}; amqtt is not installed)",
        uplink_protocol="auto",
        verifier_protocol="auto",
        stop=stop,
    )


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
# It stands outdoors, where its air is colder and damper than the emulated chips' indoor air:
# its placement keeps the plausibility module from comparing the two.
_FAULTY = """
[[sensor]]
id = "outdoor"
driver = "simulated"
interval = "0.5 s"
placement = "outdoor"
kind = "climate"
site = "outdoor"
seed = {seed}
faults = ["range"]
fault_every = 6
"""

# The BME280 and the SCD41 measure the same emulated indoor air; the SDS011 is the outdoor
# particulate sensor it usually is (its emulated air is urban street air).
_CHIPS = """
[[sensor]]
id = "climate"
driver = "bme280"
interval = "1 s"
placement = "indoor"
bus = "emulated"
address = 0x76

[[sensor]]
id = "co2"
driver = "scd4x"
interval = "5 s"
placement = "indoor"
bus = "emulated"
variant = "scd41"
mode = "periodic"

[[sensor]]
id = "pm"
driver = "sds011"
interval = "1 s"
placement = "outdoor"
port = "{pm_port}"
warmup = "2 s"
duty_cycle = false
"""

_SIMULATED = """
[[sensor]]
id = "air"
driver = "simulated"
interval = "1 s"
placement = "outdoor"
kind = "pm"
site = "outdoor"
seed = {seed}

[[sensor]]
id = "co2"
driver = "simulated"
interval = "1 s"
placement = "indoor"
kind = "co2"
site = "indoor"
seed = {seed}
"""

_MODULES = """
[[module]]
id = "physics"
kind = "ranges"

# Compares sensors of one placement only: indoor with indoor, outdoor with outdoor.
[[module]]
id = "plausibility"
kind = "plausibility"
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
    sensors only. Either way one simulated outdoor sensor injects out-of-range values (about one
    read in six), every sensor says where it is, and batches are sealed every 2 s."""
    text = _HEAD.format(
        url=url, prefix=PREFIX, protocol=protocol, insecure="true" if insecure else "false"
    )
    text += _FAULTY.format(seed=seed)
    text += _CHIPS.format(pm_port=pm_port) if pm_port else _SIMULATED.format(seed=seed)
    return text + _MODULES


def _needs_insecure(url: str) -> bool:
    """A plain mqtt:// broker off this machine: the demo's readings are simulated and signed
    by a throwaway key, so sending them unencrypted is allowed (and said in the summary)."""
    return mqtt_url.parse(url, where="--broker", bare=True).plain_off_machine


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
    """Feeds every batch and birth message the broker delivers to a Verifier and counts, the
    flags of the verified readings too."""

    verifier: Verifier
    device_id: str
    batches: int = 0
    readings: int = 0
    births: int = 0
    duplicates: int = 0
    others: int = 0  # messages of other devices (on a shared broker): not ours to judge
    forged: list[Finding] = field(default_factory=list)
    #: (flag, sensor, what else) -> readings with that flag in the verified batches; what else:
    #: "out of range too" (the reading has the range flag too: the injected fault), "without a
    #: value" (a reading the sensor could not take, e.g. while it warms up) or ""
    flags: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    protocol: str = ""
    subscribed: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def feed(self, topic: str, payload: bytes) -> Finding | None:
        if not payload:  # a retained message being cleared, not a message to judge
            return None
        f = self.verifier.check(payload, source=topic)
        parts = topic.split("/")
        on_other_topic = len(parts) >= 2 and parts[-2] != self.device_id
        if f.kind == "unknown-device" and on_other_topic:
            self.others += 1
        elif f.forged:
            self.forged.append(f)
        elif f.kind in LINKED:
            self.batches += 1
            self.readings += f.records
            self._count_flags(payload)
        elif f.kind == "birth":
            self.births += 1
        elif f.kind == "duplicate":
            self.duplicates += 1
        self.changed.set()
        return f

    def _count_flags(self, message: bytes) -> None:
        x = examine(message)
        if not isinstance(x, Examined):  # cannot happen for a batch the verifier accepted
            return
        for rec in x.batch.records:
            sensor = str(rec.get(payloads.N, "")).partition("/")[0]
            flags = [str(f) for f in rec.get(payloads.FLAGS, ())]
            if payloads.V not in rec:
                why = "without a value"
            else:
                why = "out of range too" if "range" in flags else ""
            for flag in flags:
                self.flags[(flag, sensor, "" if flag == "range" else why)] += 1

    async def run(self, settings: ClientSettings, *, protocol: str) -> None:
        """Subscribe and check until cancelled; reconnects if the broker goes away after the
        first subscription, raises UplinkError if it never could subscribe."""

        def subscribed(used: str) -> None:
            self.protocol = used
            self.subscribed.set()

        def lost(e: Lost) -> None:
            if not e.subscribed:
                raise UplinkError(f"verifier: broker {settings.where}: {e.error}") from e.error
            log.warning("verifier: broker %s: %s; reconnecting", settings.where, e.error)

        await subscribe_forever(
            settings,
            [(f"{PREFIX}/+/batch", 1), (f"{PREFIX}/+/birth", 1)],
            lambda msg: self.feed(msg.topic, msg.payload),
            backoff=Backoff(RECONNECT_MAX, base=RECONNECT_MIN),
            protocol=protocol,
            on_subscribed=subscribed,
            on_lost=lost,
        )


def _settings(host: str, port: int, *, tls: bool, role: str) -> ClientSettings:
    """The verifier's and the clean-up's clients: each an identifier of its own, the system's
    trust store for mqtts:// (the demo takes no CA file)."""
    ident = f"dg-demo-{role}-{secrets.token_hex(4)}"
    return ClientSettings(host=host, port=port, tls=tls, identifier=ident, timeout=CONNECT_TIMEOUT)


# --- leaving the broker as it was -------------------------------------------------------------


async def retained_topics(client: aiomqtt.Client, filters: Iterable[str]) -> set[str]:
    """Topics under `filters` the broker holds a retained message for: it delivers them right
    after the subscription; they have stopped once nothing came for RETAINED_SETTLE."""
    found: set[str] = set()
    for f in filters:
        await client.subscribe(f, qos=1)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RETAINED_MAX
    messages = aiter(client.messages)
    while loop.time() < deadline:
        try:
            msg = await asyncio.wait_for(anext(messages), RETAINED_SETTLE)
        except TimeoutError:
            break
        if msg.retain and msg.payload:
            found.add(str(msg.topic))
    for f in filters:
        await client.unsubscribe(f)
    return found


def device_filters(device_id: str, discovery_prefix: str | None) -> list[str]:
    """Every topic the gateway of `device_id` publishes retained messages on: its own (birth,
    status, state, health, model results) and its Home Assistant discovery configs."""
    out = [f"{PREFIX}/{device_id}/#"]
    if discovery_prefix is not None:
        out += homeassistant.subscriptions(discovery_prefix, device_id)
    return out


async def clear_retained(
    settings: ClientSettings, *, protocol: str, filters: list[str]
) -> tuple[int, int]:
    """Clear every retained message under `filters` with an empty retained publish (which also
    makes Home Assistant remove the entities), then look again. Returns (cleared, left)."""
    async with make_client(settings, protocol) as client:
        found = await retained_topics(client, filters)
        for topic in sorted(found):
            await client.publish(topic, b"", qos=1, retain=True)
        left = await retained_topics(client, filters) if found else set()
    return len(found), len(left)


# --- output -----------------------------------------------------------------------------------


def _count(n: int) -> str:
    """A count in at most 5 characters: 987, 98765, 987k, 9.9M."""
    if n < 100_000:
        return str(n)
    if n < 10_000_000:
        return f"{n // 1000}k" if n < 1_000_000 else f"{n / 1e6:.1f}M"
    return f"{n // 1_000_000}M"


def _elapsed(t: float) -> str:
    s = int(t)
    if s < 3600:
        return f"{s}s" if s < 60 else f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s // 60 % 60:02d}m"


def status_line(
    t: float, h: Health, w: Watch, *, queue: int | None = None, width: int = LIVE_WIDTH
) -> str:
    """The live line: readings taken, acknowledged by the broker, verified next to it,
    flagged, forged, waiting. Exact counts while they fit `width`, shortened after."""
    figures = (
        ("readings", h.readings),
        ("acked", h.readings_acked),
        ("verified", w.readings),
        ("flagged", h.flagged),
        ("forged", len(w.forged)),
        ("queue", h.queue_depth if queue is None else queue),
    )
    line = f"t={_elapsed(t)} " + " ".join(f"{k} {v}" for k, v in figures)
    if len(line) > width:
        line = f"t={_elapsed(t)} " + " ".join(f"{k} {_count(v)}" for k, v in figures)
    return line[:width]


class _Live:
    """The one-line summary: rewritten in place on a terminal, else a new line every 2 s (no
    carriage returns in a log)."""

    def __init__(self, out: TextIO, h: Health, w: Watch) -> None:
        self.out, self.h, self.w = out, h, w
        self.tty = out.isatty()
        self.started = time.monotonic()
        self.last = ""
        self.on_screen = False  # a live line is on the terminal's current line

    def _width(self) -> int:
        cols = shutil.get_terminal_size((LIVE_WIDTH + 1, 24)).columns
        return max(20, min(LIVE_WIDTH, cols - 1))

    def show(self, *, final: bool = False) -> None:
        t = time.monotonic() - self.started
        # after the stop the daemon no longer refreshes its queue depth
        queue = max(0, self.h.readings - self.h.readings_acked) if final else None
        if self.tty:
            line = status_line(t, self.h, self.w, queue=queue, width=self._width())
            self.out.write(f"\r{line}\x1b[K" + ("\n" if final else ""))
            self.on_screen = not final
        else:
            line = status_line(t, self.h, self.w, queue=queue)
            if line != self.last:
                self.out.write(line + "\n")
        self.last = line
        self.out.flush()

    def clear(self) -> None:
        """Take the live line off the terminal (for a log line), `show` puts it back."""
        if self.on_screen:
            self.out.write("\r\x1b[K")
            self.out.flush()
            self.on_screen = False

    async def run(self) -> None:
        every = TTY_EVERY if self.tty else LINE_EVERY
        while True:
            await asyncio.sleep(every)
            self.show()


class _AroundLive(logging.StreamHandler):  # type: ignore[type-arg]
    """Warnings on stderr without tearing the live line on the same terminal: the line is
    taken off, the record written, the line shown again."""

    #: the live line being shown, set by `run_demo` (one demo per process)
    live: _Live | None = None

    def emit(self, record: logging.LogRecord) -> None:
        live = _AroundLive.live
        if live is None or not live.on_screen:
            super().emit(record)
            return
        live.clear()
        super().emit(record)
        live.show()


def _row(name: str, text: str) -> str:
    return f"  {name:<10}{text}"


def _describe(s: SensorConfig) -> str:
    """One sensor in the start-up listing: id, placement, what it is."""
    o = s.options
    if s.driver == "simulated":
        what = f"simulated {o.get('kind', 'climate')} sensor"
        if o.get("faults"):
            what += f"; injects {', '.join(o['faults'])} faults"
    elif s.driver == "bme280":
        what = "BME280 driver, chip emulated on the I2C bus"
    elif s.driver == "scd4x":
        what = f"{str(o.get('variant', 'scd4x')).upper()} driver, chip emulated on the I2C bus"
    elif s.driver == "sds011":
        what = "SDS011 driver, chip emulated on a pseudo-terminal"
    else:
        what = f"{s.driver} driver"
    return f"{s.id:<8} {what}" + (f", {s.placement}" if s.placement else "")


@dataclass
class Result:
    did: str
    broker: str
    broker_kind: str
    uplink_protocol: str
    verifier_protocol: str
    workdir: Path
    kept: bool
    insecure: bool
    seconds: float
    health: Health
    watch: Watch
    #: retained messages of the demo's device on a given broker: (cleared, left), or a problem
    retained: tuple[int, int] | str | None = None

    @property
    def embedded(self) -> bool:
        return self.broker_kind != "external"

    @property
    def ok(self) -> bool:
        return not self.watch.forged and self.watch.readings > 0

    def _flags(self) -> list[str]:
        """Per flag: how many verified readings carry it, on which sensors, and whether they
        are injected faults (out of range) or readings without a value: what tells a reader
        that no correct reading was flagged. The injected range fault first."""
        per_flag: dict[str, Counter[str]] = {}
        why: dict[str, Counter[str]] = {}
        for (flag, sensor, what), n in self.watch.flags.items():
            per_flag.setdefault(flag, Counter())[sensor] += n
            why.setdefault(flag, Counter())[what] += n
        out = []
        for flag, sensors in sorted(
            per_flag.items(), key=lambda kv: (kv[0] != "range", -kv[1].total(), kv[0])
        ):
            total = sensors.total()
            where = ", ".join(
                f"{s} {n}" if len(sensors) > 1 else s for s, n in sorted(sensors.items())
            )
            notes = [
                ("all " if n == total else f"{n} ") + what
                for what, n in sorted(why[flag].items())
                if what
            ]
            out.append(f"{flag} {total} ({'; '.join([where, *notes])})")
        return out or ["none"]

    def render(self) -> str:
        h, w = self.health, self.watch
        note = ", plain text to another machine" if self.insecure else ""
        up, down = self.uplink_protocol or "-", self.verifier_protocol or "-"
        rows = [
            ("device", self.did),
            ("broker", f"{self.broker} ({self.broker_kind}{note})"),
            ("protocol", f"gateway MQTT {up}, verifier MQTT {down}"),
            ("work dir", f"{self.workdir} ({'kept' if self.kept else 'removed'})"),
            ("ran", f"{self.seconds:.1f} s"),
            ("readings", str(h.readings)),
            ("flagged", f"{h.flagged} (fault injected: range on outdoor)"),
            *[("flags" if n == 0 else "", text) for n, text in enumerate(self._flags())],
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
        if isinstance(self.retained, str):
            rows.append(("left behind", self.retained))
        elif self.retained is not None:
            cleared, left = self.retained
            text = f"nothing retained (cleared {cleared} retained messages of this device)"
            if left:
                text = f"{left} retained messages of this device could not be cleared"
            rows.append(("left behind", text))
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
    handler = _AroundLive(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.WARNING, handlers=[handler])
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

    def say(text: str) -> None:
        out.write(text + "\n")
        out.flush()

    broker = await start_broker(broker_url)
    say("depin-gateway demo: sensors, broker, gateway and a verifier on this machine")
    say(_row("broker", broker.detail))
    pm_chip: Any = None
    tasks: list[asyncio.Task[None]] = []
    try:
        pm_port = None
        if not simulated:
            pm_chip = _start_emulators(workdir, seed)
            pm_port = pm_chip.path
        ident, cfg = prepare(
            workdir, broker.url, seed=seed, protocol=broker.uplink_protocol, pm_port=pm_port
        )
        for n, sensor in enumerate(cfg.sensors):
            say(_row("sensors" if n == 0 else "", _describe(sensor)))
        mods = [m.id if m.id == m.kind else f"{m.id} ({m.kind})" for m in cfg.modules]
        say(_row("modules", ", ".join(mods)))
        u = cfg.uplink
        gw = Gateway(cfg, ident=ident, shutdown_timeout=SHUTDOWN_TIMEOUT)
        say(_row("gateway", ident.did))
        say(_row("", f"work dir {workdir} ({'kept' if kept else 'removed at the end'})"))
        watch = Watch(Verifier(allowed_dids=[ident.did]), ident.device_id)
        verifier_task = asyncio.create_task(
            watch.run(
                _settings(u.host, u.port, tls=u.tls, role="verifier"),
                protocol=broker.verifier_protocol,
            ),
            name="demo-verifier",
        )
        tasks.append(verifier_task)
        await _wait_subscribed(watch, verifier_task)
        say(_row("verifier", f"checks every batch and birth under {PREFIX}/"))
        until = "Ctrl-C stops it" if duration is None else f"stops after {duration:g} s"
        say(_row("live", f"{until}, then a summary"))

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
        _AroundLive.live = live
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
        _AroundLive.live = None
        verifier_task.cancel()
        retained: tuple[int, int] | str | None = None
        if not broker.embedded:
            # A broker that outlives the demo: take back what the device left retained, or
            # Home Assistant and dashboards would keep showing a device that is gone.
            mon = cfg.monitor
            filters = device_filters(
                ident.device_id, mon.discovery_prefix if mon.homeassistant else None
            )
            try:
                retained = await clear_retained(
                    _settings(u.host, u.port, tls=u.tls, role="cleanup"),
                    protocol=watch.protocol or "3.1.1",
                    filters=filters,
                )
            except (aiomqtt.MqttError, OSError) as e:
                retained = f"retained messages of this device not cleared: {e}"
        return Result(
            did=ident.did,
            broker=broker.url,
            broker_kind=broker.kind,
            uplink_protocol=gw.health.protocol,
            verifier_protocol=watch.protocol,
            workdir=workdir,
            kept=kept,
            insecure=u.insecure,
            seconds=seconds,
            health=gw.health,
            watch=watch,
            retained=retained,
        )
    finally:
        _AroundLive.live = None
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if pm_chip is not None:
            pm_chip.stop()
        await broker.stop()


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
