"""Delivery of sealed batches to the MQTT broker (aiomqtt on paho-mqtt 2).

- MQTT 5 first (content type on COSE messages), falling back to 3.1.1 for brokers without it
  (gateway/mqtt/connect.py); once a broker refused 5, "auto" stays on 3.1.1.
- Last Will `offline` and a retained `online` status; the signed birth message on every connect.
- Up to `max_inflight` batches await their PUBACK at once, published oldest first; a batch
  counts as delivered only when its PUBACK arrives (`Batches.acked`), never when it was
  written.
- Reconnects with capped, jittered exponential backoff; after a reconnect the outbox is rebuilt
  from the spool, so what the broker never acknowledged is sent again byte for byte.
- Subscribes to what the daemon asks for (model updates, its attestation, Home Assistant's
  status) and hands each message to the daemon, one at a time per topic kind: while one is
  handled, only the newest message of each topic waits (at most one cap's worth of bytes per
  kind), and the ones it replaced count as ignored; `publish` sends the daemon's own messages
  (state, health, discovery) while connected.
- Anyone on the broker may publish on those topics, retained too: every message is judged by its
  size before anything reads it (`gateway.wire.limits`), and one over its topic's cap, or one its
  handler fails on, is counted in health's `ignored_messages` (by topic kind) and logged at most
  once a minute per kind; it never ends the connection or the gateway.
- Keeps the chain head on the broker (`gateway/device/head.py`): reads it back once before anything
  is sealed, publishes it retained ahead of the batches it covers, and stops the gateway when
  another process signs heads with this key.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, Protocol

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.config.settings import UplinkConfig
from gateway.core.errors import KeyInUse
from gateway.core.health import Health
from gateway.device import head
from gateway.device.head import Head
from gateway.device.seal import SealedBatch
from gateway.mqtt.backoff import Backoff
from gateway.mqtt.connect import ClientSettings, connect
from gateway.wire import cose, limits

log = logging.getLogger("gateway.uplink")

PUBLISH_TIMEOUT = 30.0
#: seconds between two log lines about ignored messages of one kind (a flood logs once)
IGNORED_LOG_INTERVAL = 60.0


def topics(prefix: str, device_id: str) -> dict[str, str]:
    base = f"{prefix}/{device_id}"
    names = (
        "batch", "birth", "head", "status", "state", "health", "model", "model/result",
        "attestation",
    )  # fmt: skip
    return {k: f"{base}/{k}" for k in names}


class Batches(Protocol):
    """Where the batches come from, as the uplink sees it (the commit buffer)."""

    async def backlog(self) -> Sequence[SealedBatch]:
        """The sealed batches the broker has not acknowledged, oldest first."""

    def acked(self, seq: int, n: int) -> None:
        """The broker acknowledged batch `seq` of `n` readings."""


class Inbox(Protocol):
    """Where the messages on the gateway's subscriptions go."""

    async def deliver(self, topic: str, payload: bytes) -> None: ...


class ChainHead(Protocol):
    """What the uplink needs from the daemon to keep the chain head on the broker."""

    boot: bytes

    def current(self) -> tuple[int, bytes] | None:
        """The seq of the last batch sealed and its signed head; None before the first."""

    def read(self, message: bytes) -> Head | None:
        """The head in a message on the head topic, if this device's key signed it."""

    async def anchor(self, found: Head | None) -> int:
        """Take the chain up after the head the broker kept (None: none) and start sealing;
        returns the next seq to be sealed."""


class Uplink:
    def __init__(
        self,
        cfg: UplinkConfig,
        *,
        device_id: str,
        client_id: str,
        password: str | None,
        health: Health,
        batches: Batches,
        birth: Callable[[], Awaitable[bytes]],
        inbox: Inbox | None = None,
        on_connect: Callable[[], Coroutine[Any, Any, None]] | None = None,
        chain_head: ChainHead | None = None,
    ) -> None:
        self.cfg = cfg
        self.client_id = client_id
        self.password = password
        self.health = health
        self.topics = topics(cfg.topic_prefix, device_id)
        self._batches = batches
        self._birth = birth
        self._inbox = inbox
        self._on_connect = on_connect
        #: topic filters subscribed (QoS 1) on every connect
        self.subscriptions: list[str] = []
        self._outbox: dict[int, tuple[bytes, int]] = {}
        self._inflight: set[int] = set()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._client: aiomqtt.Client | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        # "auto" starts with MQTT 5 and settles on 3.1.1 once a broker refused 5.
        self._protocol = cfg.protocol
        self._chain_head = chain_head
        # The first seq this process seals (known once anchored): a head from another process
        # at or above it means two gateways sign with one key.
        self._anchored_at: int | None = None
        self._kept: Head | None = None  # the head the broker kept from an earlier process
        self._synced = asyncio.Event()
        # Not a head (no COSE), and ours alone: marks the end of what the broker keeps.
        self._sync = b"sync " + (chain_head.boot.hex().encode() if chain_head else b"")
        self._head_sent = -1  # on this connection
        self._ignored_logged: dict[str, float] = {}  # topic kind -> when last logged
        # topic kind -> the messages waiting for its handler, newest per topic, oldest first
        self._waiting: dict[str, dict[str, bytes]] = {}
        self._handling: set[str] = set()  # topic kinds whose handler runs

    # --- called by the daemon -----------------------------------------------------------------

    def offer(self, batch: SealedBatch) -> None:
        """A newly sealed (and already durable) batch."""
        self._outbox[batch.seq] = (batch.message, batch.n)
        self._idle.clear()
        self._wake.set()

    def announce(self) -> None:
        """Publish a fresh birth message now (the modules changed); the next connect would."""
        client = self._client
        if client is None:
            return
        self._spawn(self._announce(client), "announce")

    async def _announce(self, client: aiomqtt.Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            await self._publish_birth(client)

    async def _publish_birth(self, client: aiomqtt.Client) -> None:
        await client.publish(
            self.topics["birth"],
            await self._birth(),
            qos=1,
            retain=True,
            properties=self._props(),
            timeout=PUBLISH_TIMEOUT,
        )

    @property
    def pending(self) -> int:
        return len(self._outbox)

    async def drain(self, timeout: float) -> bool:
        """Wait until every offered batch is acknowledged; False if time ran out."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    async def run(self) -> None:
        """Connect, deliver, reconnect: until cancelled."""
        delays = Backoff(self.cfg.reconnect_max)
        while True:
            try:
                await self._session()
            # OSError: TLS setup and socket errors that aiomqtt does not wrap
            except* (aiomqtt.MqttError, OSError) as eg:
                self.health.uplink_errors += 1
                self.health.last_error = f"uplink: {eg.exceptions[0]}"
                log.warning("broker %s:%s: %s", self.cfg.host, self.cfg.port, eg.exceptions[0])
            else:
                delays.reset()
                continue
            finally:
                self.health.connected = False
                self._client = None
                self._inflight.clear()
            await asyncio.sleep(next(delays))

    async def close(self) -> None:
        """Clean goodbye: retained `offline`, then DISCONNECT (so the Will is not needed)."""
        client = self._client
        if client is None:
            return
        with contextlib.suppress(aiomqtt.MqttError, TimeoutError):
            await client.publish(self.topics["status"], b"offline", qos=1, retain=True, timeout=2)

    # --- one connection -----------------------------------------------------------------------

    def _settings(self) -> ClientSettings:
        cfg = self.cfg
        return ClientSettings(
            host=cfg.host,
            port=cfg.port,
            tls=cfg.tls,
            ca_file=cfg.ca_file,
            cert_file=cfg.cert_file,
            key_file=cfg.key_file,
            identifier=self.client_id,
            username=cfg.username,
            password=self.password,
            will=aiomqtt.Will(self.topics["status"], b"offline", qos=1, retain=True),
            keepalive=int(cfg.keepalive),
            max_inflight=cfg.max_inflight,
            session_expiry=0,  # said outright in MQTT 5: nothing is kept past a connection
        )

    async def _connect(self, stack: contextlib.AsyncExitStack) -> aiomqtt.Client:
        client, proto = await connect(stack, self._settings(), self._protocol)
        if self._protocol == "auto" and proto != "5":
            log.info("broker refused MQTT 5; using MQTT 3.1.1")
            self._protocol = proto
        self.health.protocol = proto
        return client

    def _props(self) -> Properties | None:
        if self.health.protocol != "5":
            return None
        p = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        p.ContentType = cose.CONTENT_TYPE
        return p

    async def _session(self) -> None:
        async with contextlib.AsyncExitStack() as stack:
            client = await self._connect(stack)
            self._client = client
            self.health.connected = True
            self.health.connects += 1
            log.info(
                "connected to %s:%s (MQTT %s)", self.cfg.host, self.cfg.port, self.health.protocol
            )
            props = self._props()
            self._head_sent = -1
            await client.publish(
                self.topics["status"], b"online", qos=1, retain=True, timeout=PUBLISH_TIMEOUT
            )
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._watch(client), name="uplink-watch")
                filters = list(self.subscriptions)
                if self._chain_head is not None:
                    filters.insert(0, self.topics["head"])
                    self._synced.clear()
                codes: Any = ()
                if filters:
                    codes = await client.subscribe(
                        [(t, 1) for t in filters], timeout=PUBLISH_TIMEOUT
                    )
                if self._chain_head is not None and self._anchored_at is None:
                    await self._anchor(client, self._chain_head, codes[0])
                await self._publish_birth(client)
                if self._on_connect is not None:
                    self._spawn(self._on_connect(), "on-connect")
                # Rebuild the outbox from the spool: whatever the broker did not acknowledge
                # before is sent again, exactly as it was sealed.
                for seq, message, n in await self._batches.backlog():
                    self._outbox.setdefault(seq, (message, n))
                self._wake.set()
                tg.create_task(self._sender(client, props, tg), name="uplink-sender")

    async def _anchor(self, client: aiomqtt.Client, chain_head: ChainHead, code: Any) -> None:
        """Read the head the broker keeps, then let the spool seal. Until then nothing is
        sealed: a broker that refuses the topic or does not answer ends this connection (the
        next one tries again), it never counts as a broker that keeps no head."""
        topic = self.topics["head"]
        need = (
            f"the device needs to subscribe and publish on {topic}; until it can, it seals "
            f"nothing (its readings wait in the spool)"
        )
        if int(getattr(code, "value", code)) >= 0x80:
            raise aiomqtt.MqttError(
                f"the broker refused the chain head subscription ({code}): {need}"
            )
        # The end of what the broker keeps: our own message on the same topic comes back after
        # the retained one (one topic, delivered in order), and it is not a head.
        await client.publish(topic, self._sync, qos=1, retain=False, timeout=PUBLISH_TIMEOUT)
        try:
            async with asyncio.timeout(head.WAIT):
                await self._synced.wait()
        except TimeoutError:
            raise aiomqtt.MqttError(
                f"no answer on the chain head topic within {head.WAIT:g} s: {need}"
            ) from None
        kept = self._kept
        if kept is None:
            log.info("the broker keeps no chain head for this device")
        else:
            log.info("the broker's chain head for this device: seq %d", kept.seq)
        self._anchored_at = await chain_head.anchor(kept)
        # What the spool had sealed before (now gone if the chain moved) is not sent.
        self._outbox.clear()

    def _head_in(self, found: Head, chain_head: ChainHead) -> None:
        if found.boot == chain_head.boot:
            return  # our own, back from the broker
        at = self._anchored_at
        if at is None:
            # Retained or not: an earlier process's, an old one replayed by anyone, or a
            # running copy's. The chain goes on after the highest; a running copy then meets
            # our heads above its own start, and stops.
            if self._kept is None or found.seq > self._kept.seq:
                self._kept = found
            return
        if found.seq >= at:
            raise KeyInUse(
                f"another gateway signs with this device's key: a process started elsewhere "
                f"published its chain head at seq {found.seq}"
                + f" (this one continued from seq {at})"
                + "; stopped before signing more. One key, one running gateway: stop the "
                "other one (a copied key file or image), then start this one again"
            )
        # Below our anchor: an old head of ours replayed by someone; it changes nothing.

    async def _watch(self, client: aiomqtt.Client) -> None:
        # aiomqtt reports a lost connection through the message iterator.
        chain_head = self._chain_head
        head_topic = self.topics["head"]
        async for msg in client.messages:
            payload = msg.payload
            if not isinstance(payload, bytes | bytearray):
                continue
            topic = msg.topic.value
            too_big = limits.too_big(topic, len(payload))
            if too_big is not None:
                self._ignored(topic, f"refused unread: {too_big}")
                continue
            if chain_head is not None and topic == head_topic:
                if payload == self._sync:
                    self._synced.set()
                    continue
                found = chain_head.read(bytes(payload))  # never raises: anyone's bytes
                if found is not None:
                    self._head_in(found, chain_head)
            elif self._inbox is not None:
                self._queue(self._inbox, topic, bytes(payload))
        raise aiomqtt.MqttError("connection closed")

    def _queue(self, inbox: Inbox, topic: str, payload: bytes) -> None:
        """One handler runs per topic kind; what comes meanwhile waits, the newest message of
        each topic only, and no more bytes of a kind than one message of its cap. A flood of
        large messages (16 MiB bundles every few milliseconds) then holds two of them at most,
        not one per message; the ones replaced are counted as ignored."""
        kind = limits.kind_of(topic)
        waiting = self._waiting.setdefault(kind, {})
        old = waiting.pop(topic, None)
        if old is not None:
            self._ignored(topic, "replaced by a newer message before it was handled")
        budget = limits.cap(topic) - len(payload)
        while waiting and sum(map(len, waiting.values())) > budget:
            dropped = next(iter(waiting))  # the oldest waiting
            del waiting[dropped]
            self._ignored(dropped, "dropped unhandled: newer messages of its kind came")
        waiting[topic] = payload
        if kind not in self._handling:
            self._handling.add(kind)
            self._spawn(self._handle(inbox, kind), f"message-{kind}")

    async def _handle(self, inbox: Inbox, kind: str) -> None:
        waiting = self._waiting[kind]
        try:
            while waiting:
                topic = next(iter(waiting))
                payload = waiting.pop(topic)
                try:
                    await inbox.deliver(topic, payload)
                except Exception as e:  # a handler's surprise on anyone's message: counted
                    self._ignored(topic, f"its handler failed: {e!r}")
                del payload
        finally:
            self._handling.discard(kind)

    def _ignored(self, topic: str, why: str) -> None:
        kind = limits.kind_of(topic)
        self.health.ignored_messages[kind] += 1
        now = time.monotonic()
        last = self._ignored_logged.get(kind)
        if last is None or now - last >= IGNORED_LOG_INTERVAL:
            self._ignored_logged[kind] = now
            count = self.health.ignored_messages[kind]
            log.warning("ignored a message on %s (%d %r so far): %s", topic, count, kind, why)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", task.get_name(), exc_info=task.exception())

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = True
    ) -> bool:
        """Publish one of the daemon's own messages if connected; False when not sent."""
        client = self._client
        if client is None:
            return False
        try:
            await client.publish(topic, payload, qos=qos, retain=retain, timeout=PUBLISH_TIMEOUT)
        except aiomqtt.MqttError:
            return False
        return True

    async def _sender(
        self, client: aiomqtt.Client, props: Properties | None, tg: asyncio.TaskGroup
    ) -> None:
        slots = asyncio.Semaphore(self.cfg.max_inflight)
        while True:
            todo = sorted(s for s in self._outbox if s not in self._inflight)
            if not todo:
                if not self._inflight:
                    self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            self._publish_head(client, todo[-1], tg)
            for seq in todo:
                await slots.acquire()
                self._inflight.add(seq)
                tg.create_task(self._publish(client, seq, props, slots), name=f"publish-{seq}")

    def _publish_head(self, client: aiomqtt.Client, upto: int, tg: asyncio.TaskGroup) -> None:
        """Before batches up to `upto` go: the head, retained. Started first, so its PUBLISH
        is written before theirs and the broker keeps it before any of them is delivered."""
        if self._chain_head is None or upto <= self._head_sent:
            return
        current = self._chain_head.current()
        if current is None or current[0] <= self._head_sent:
            return
        self._head_sent = current[0]
        # QoS 0: it needs no slot among the batches' in-flight PUBLISHes (at QoS 1 it cost
        # a tenth of the throughput at full speed), and it still goes out before them on this
        # connection; lost with the connection, it is sent again before anything else on the
        # next one.
        tg.create_task(
            client.publish(
                self.topics["head"],
                current[1],
                qos=0,
                retain=True,
                properties=self._props(),
                timeout=PUBLISH_TIMEOUT,
            ),
            name="publish-head",
        )

    async def _publish(
        self,
        client: aiomqtt.Client,
        seq: int,
        props: Properties | None,
        slots: asyncio.Semaphore,
    ) -> None:
        message, n = self._outbox[seq]
        try:
            await client.publish(
                self.topics["batch"], message, qos=1, properties=props, timeout=PUBLISH_TIMEOUT
            )
        finally:
            slots.release()
        # PUBACK received: the broker owns the batch now.
        self._inflight.discard(seq)
        self._outbox.pop(seq, None)
        self._batches.acked(seq, n)
        if not self._outbox and not self._inflight:
            self._idle.set()
        self._wake.set()
