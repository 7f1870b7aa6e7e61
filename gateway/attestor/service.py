"""One attestor worker: MQTT in, store, attestations out.

paho-mqtt directly (not aiomqtt): with `manual_ack` a batch's PUBACK goes back only after the
transaction that stored it committed, so a worker killed mid-batch leaves the batch with the
broker, which delivers it again (to this worker's persistent session or to another member of
the shared group), and processing it twice is harmless.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from gateway.attestor import chains, epochs, gate, registry
from gateway.attestor.config import AttestorConfig
from gateway.attestor.db import Database, is_outage
from gateway.attestor.lanes import Item, Lanes
from gateway.attestor.quiet import Quiet
from gateway.attestor.redact import Redact, safe_url
from gateway.config.settings import read_password
from gateway.mqtt import tls
from gateway.mqtt.backoff import Backoff
from gateway.wire import identity, limits
from gateway.wire.identity import Identity, device_id_of
from gateway.wire.verify import LINKED, Examined, Finding, examine

log = logging.getLogger("gateway.attestor")
#: seqs at or above this cannot be stored (a signed 64-bit column; seq + 1 is looked up too)
MAX_SEQ = 2**63 - 1
#: a line an outsider could repeat (a refused message, a dead broker) is logged at most this
#: often per kind, with the number left out
QUIET = 60.0
#: a lost broker is tried again after about this long, doubling up to RECONNECT_MAX (jittered,
#: gateway/mqtt/backoff.py, as every wait below)
RECONNECT_MIN, RECONNECT_MAX = 1.0, 5.0
#: a message the store could not take is tried again after this long, doubling up to RETRY_MAX
RETRY_MIN, RETRY_MAX = 0.05, 5.0
#: a worker process that died is started again after this long, doubling up to RESTART_MAX;
#: one that ran for RESTART_RESET seconds starts from RESTART_MIN again
RESTART_MIN, RESTART_MAX, RESTART_RESET = 1.0, 30.0, 60.0


class StoreAway(RuntimeError):
    """The store could not take a message (an outage, not the message): it is tried again."""


class _Client(mqtt.Client):
    """paho's client, keeping why the last connection attempt failed: paho's on_connect_fail
    is told nothing, and a broker that cannot be reached must be named with the reason."""

    last_error: OSError | None = None

    def reconnect(self) -> MQTTErrorCode:
        try:
            return super().reconnect()
        except OSError as e:
            self.last_error = e
            raise


class Worker:
    def __init__(self, cfg: AttestorConfig, ident: Identity, index: int = 0) -> None:
        self.cfg = cfg
        self.identity = ident
        self.index = index
        self.db = Database(cfg.store)
        self.counts: Counter[str] = Counter()
        self.lanes = Lanes(cfg.inbox_bytes)
        # Counted in paho's thread (refused unread, dropped from a full junk lane), written to
        # the store at the next tick under did "" (nobody's): never a store call in that thread.
        self.refused: Counter[str] = Counter()
        self._refused_lock = threading.Lock()
        # Messages this worker stored, and the copies of them it was sent again since, by did:
        # counted here (under the same lock as `refused`), written at the next tick.
        self.recent = gate.Recent()
        self.duplicates: Counter[str] = Counter()
        self.connected = threading.Event()
        self._stopping = threading.Event()
        # Bumped at every connect and disconnect (paho's thread); under the lock with an ack,
        # so an ack never goes out on a connection other than its message's.
        self._connection = 0
        self._fresh_session = 0  # the last connection the broker had no session for
        self._conn_lock = threading.Lock()
        # Registered dids, read by the cheap checks in paho's thread: replaced whole (never
        # changed in place) by the worker's thread, from the store, at start and every tick.
        self._registered: frozenset[str] = registry.registered_dids(self.db)
        self._last_tick = 0.0
        self._junk = False
        self._quiet = Quiet(QUIET)
        self.client = _Client(
            CallbackAPIVersion.VERSION2,
            # Stable across restarts (the broker keeps the session's queue), unique per
            # attestor key, group and worker.
            client_id=f"att-{ident.device_id[-12:]}-{cfg.group}-{index}",
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        if cfg.username is not None:
            password = read_password("broker", cfg.password_file, cfg.password_env)
            self.client.username_pw_set(cfg.username, password)
        if cfg.tls:
            self.client.tls_set_context(tls.context(cfg.ca_file, cfg.cert_file, cfg.key_file_tls))
        self.client.max_inflight_messages_set(100)
        self._reconnect = Backoff(RECONNECT_MAX, base=RECONNECT_MIN)
        self._next_reconnect()
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # --- MQTT (paho's thread) -----------------------------------------------------------------

    def topics(self) -> list[str]:
        p = self.cfg.topic_prefix
        batches = f"{p}/+/batch"
        if self.cfg.shared:
            batches = f"$share/{self.cfg.group}/{batches}"
        # Births are never shared: brokers send no retained messages to shared subscriptions,
        # and every worker storing a birth is harmless (one row per device and boot).
        return [batches, f"{p}/+/birth"]

    def _on_connect(
        self, client: mqtt.Client, _u: object, flags: object, rc: object, _p: object = None
    ) -> None:
        if getattr(rc, "is_failure", False):
            self._broker_warning("refused", f"the broker refused the attestor: {rc}")
            return
        self._reconnect.reset()
        # From now on the messages still queued from an earlier connection are stale: their
        # mids were that connection's (acking one here could ack another message), and with a
        # persistent session (clean_session=False) the broker delivers every unacked QoS 1
        # message again on this one. `_take` drops them.
        with self._conn_lock:
            self._connection += 1
            if not getattr(flags, "session_present", False):
                # The broker has no session (a first start, or a broker that lost its state):
                # it will not deliver again what an earlier connection got and did not ack.
                self._fresh_session = self._connection
        client.subscribe([(t, 1) for t in self.topics()])
        self.connected.set()
        log.info("connected to the broker at %s:%d", self.cfg.host, self.cfg.port)

    def _on_disconnect(self, *_args: object) -> None:
        self.connected.clear()
        with self._conn_lock:
            self._connection += 1
        self._next_reconnect()

    def _on_connect_fail(self, *_args: object) -> None:
        error = self.client.last_error
        self._broker_warning("unreachable", f"cannot reach the broker: {error or 'no reason'}")
        self._next_reconnect()

    def _broker_warning(self, key: str, what: str) -> None:
        held = self._quiet.due(key)
        if held is not None:
            more = f" ({held} more since the last such line)" if held else ""
            log.warning("broker %s:%d: %s%s", self.cfg.host, self.cfg.port, what, more)

    def _next_reconnect(self) -> None:
        """Set the wait before paho's next connect attempt. paho waits its reconnect delay
        before each attempt, doubling it from min to max by itself without jitter; with both
        set to the next delay of the shared backoff it waits exactly that."""
        delay = next(self._reconnect)
        # paho declares the delays int; it sleeps floats
        self.client.reconnect_delay_set(delay, delay)  # type: ignore[arg-type]

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        """The cheap checks, in the order of their cost: the size for the topic, whether this
        worker stored the very same bytes already, then the signature, whether its signer is
        registered and whether the topic is the signer's own. Only what passes all of them
        waits for the store before its ack; everything else is acked at once, so junk never
        holds the broker's in-flight window (100 messages) that honest batches need."""
        topic, payload = msg.topic, bytes(msg.payload)
        why = limits.too_big(topic, len(payload))
        if why is not None:
            self._ack_now(msg)
            self._refuse("oversized", f"{topic}: {why}")
            return
        key = gate.key_of(payload)
        device = gate.topic_device(topic)
        if self._seen_again(key, device):
            self._ack_now(msg)
            return
        connection = self._connection
        signer = gate.signer(payload)
        if signer in self._registered and device == device_id_of(signer or ""):
            item = Item(topic, payload, msg.mid, msg.qos, connection, False, device, key)
            self.lanes.put_priority(item, self._stopping)
            return
        self._ack_now(msg)
        item = Item(topic, payload, msg.mid, msg.qos, connection, True, device, key)
        if not self.lanes.put_junk(item):
            self._refuse("dropped", "junk lane full")

    def _seen_again(self, key: bytes, device: str) -> bool:
        """Whether a message is a copy of one this worker stored: counted, never judged again.
        A batch on its device's own topic is that device's duplicate (what the store would have
        said, without the transaction); a copy on any other topic is nobody's (anyone can
        publish one there). A copy of a birth on its own topic is not counted, as the first."""
        seen = self.recent.get(key) if key else None
        if seen is None or seen.did not in self._registered:
            return False
        with self._refused_lock:
            if device != seen.device:
                self.refused["duplicate"] += 1
            elif seen.batch:
                self.duplicates[seen.did] += 1
        return True

    def _ack_now(self, msg: mqtt.MQTTMessage) -> None:
        if msg.qos > 0:
            with self._conn_lock:
                self.client.ack(msg.mid, msg.qos)

    def _refuse(self, kind: str, why: str) -> None:
        with self._refused_lock:
            self.refused[kind] += 1
        held = self._quiet.due(kind)
        if held is not None:
            more = f" ({held} more since the last such line)" if held else ""
            log.warning("message refused unread (%s): %s%s", kind, why, more)

    # --- the work (the worker's own thread) ---------------------------------------------------

    def registered(self, did: str) -> bool:
        if did in self._registered:
            return True
        if registry.is_registered(self.db, did):
            self._registered = self._registered | {did}
            return True
        return False

    def handle(
        self, topic: str, payload: bytes, now: float | None = None, *, junk: bool = False
    ) -> Finding:
        """One message, whatever it holds: its finding. Raises StoreAway only, when the store
        is away (the caller tries again); anything else raised while the message is judged or
        stored is about the message: a "malformed" finding, counted once, never retried.
        `junk`: from the junk lane, whose findings against nobody are counted at the next tick
        (one transaction for all, not one each)."""
        self._junk = junk
        try:
            finding = self._judge(topic, payload, now)
        except Exception as e:
            if is_outage(e):
                log.warning("store away, message on %s kept for later: %s", topic, e)
                raise StoreAway(f"not processed: {e}") from e
            detail = f"cannot be judged: {type(e).__name__}: {e}"[:200]
            finding = Finding("malformed", None, None, None, 0, detail, topic)
            try:
                self._count(finding)
            except Exception as again:  # the count's own store call
                if is_outage(again):
                    raise StoreAway(f"not counted: {again}") from again
                raise
            held = self._quiet.due("unjudged")
            if held is not None:
                log.warning("message on %s %s (%d more since)", topic, detail, held)
        self.counts[finding.kind] += 1
        if finding.kind == "equivocation":
            # The one finding that proves a device lied: both signed batches are kept.
            held = self._quiet.due(f"equivocation {finding.did}")
            if held is not None:
                log.error(
                    "ALARM: %s signed two different batches for seq %s; kept as evidence "
                    "(%d more since)",
                    finding.did, finding.seq, held,
                )  # fmt: skip
        elif finding.forged:
            held = self._quiet.due(f"forged {finding.kind}")
            if held is not None:
                log.warning(
                    "%s %s seq %s on %s: %s (%d more since)", finding.kind, finding.did,
                    finding.seq, topic, finding.detail, held,
                )  # fmt: skip
        return finding

    def _judge(self, topic: str, payload: bytes, now: float | None) -> Finding:
        why = limits.too_big(topic, len(payload))
        if why is not None:
            finding = Finding("malformed", None, None, None, 0, why, topic)
            self._count(finding)
            return finding
        found = examine(payload, topic, registered=self.registered)
        if isinstance(found, Examined) and found.batch.seq >= MAX_SEQ:
            # Valid CBOR, but beyond what a store column (and any honest device) holds.
            finding = found.finding("malformed", f"seq beyond {MAX_SEQ - 1}")
            self._count(finding)
        elif isinstance(found, Examined):
            finding = chains.process_batch(self.db, found, now=now, epoch=self.cfg.epoch_seconds)
        else:
            finding = found
            kept = finding.kind != "birth" or chains.process_birth(
                self.db, payload, now=now, epoch=self.cfg.epoch_seconds
            )
            if not kept:
                finding = Finding(
                    "malformed", found.did, None, found.batch_id, 0, "bad sensor list", topic
                )
            if finding.forged:
                self._count(finding)
        return finding

    def _count(self, f: Finding) -> None:
        # Unknown or unproven senders are counted together: they must not grow the store, and
        # a message whose signature failed proves nothing about the device it names.
        proven = f.batch_id is not None and f.kind != "unknown-device"
        did = f.did if f.did and proven and self.registered(f.did) else ""
        if not did and self._junk:
            with self._refused_lock:
                self.refused[f.kind] += 1
            return
        with self.db.transaction() as tx:
            chains.count(tx, did, f.kind)

    def tick(self, now: float | None = None) -> int:
        """Score and sign every closed epoch not attested yet, and the next revision of every
        attestation that batches arrived for since; returns how many this worker signed
        (another worker may have signed some first)."""
        now = time.time() if now is None else now
        length = self.cfg.epoch_seconds
        closed = epochs.epoch_of(now - self.cfg.grace, length)  # epochs ending by then
        signed = 0
        try:
            devices = registry.attestable(self.db)
            stale = registry.stale(self.db)
        except Exception:  # the store is away: the next tick tries again
            log.exception("closed epochs not looked for")
            return 0
        for did, first, registered, done in devices:
            # Epochs start at the device's registration at the earliest: a device's clock (a
            # Pi without a real-time clock starts in 1970) cannot send the attestor back in time.
            start = epochs.epoch_of(max(first, registered), length)
            if done is not None:
                start = max(start, done + length)
            try:
                while start + length <= closed:
                    message = epochs.attest(self.db, self.identity, did, start, length)
                    signed += message is not None
                    start += length
            except Exception:  # one device's odd data must not stop the others' attestations
                log.exception("epoch %d of %s not attested", start, did)
        for did, start in stale:
            try:
                message = epochs.revise(self.db, self.identity, did, start)
            except Exception:
                log.exception("epoch %d of %s not revised", start, did)
                continue
            if message is not None:
                signed += 1
                log.info("epoch %d of %s: a new revision for batches that came late", start, did)
        return signed

    def run(self, stop: threading.Event) -> None:
        self._stopping = stop
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=30)
        self.client.loop_start()
        try:
            while not stop.is_set():
                item = self.lanes.get(timeout=0.2)
                if item is not None:
                    self._take(item, stop)
                if time.monotonic() - self._last_tick >= self.cfg.tick:
                    self._last_tick = time.monotonic()
                    self._periodic()
        finally:
            stop.set()  # paho's thread may wait on a full priority lane
            self.client.disconnect()
            self.client.loop_stop()
            self.db.close()

    def _stale(self, connection: int) -> bool:
        """Whether a message of that connection is the broker's again (it will come back):
        the client has reconnected since, and the broker kept the session."""
        return connection != self._connection and self._fresh_session <= connection

    def _take(self, item: Item, stop: threading.Event) -> None:
        """Store one message, then ack it (junk was acked on arrival). While the store is away
        the SAME message is tried again (backing off up to RETRY_MAX): a message dropped unacked
        would hold one of the broker's in-flight slots for good, and once they are all held
        nothing arrives. Only an outage is retried: a message that cannot be judged is a
        finding like any other."""
        delays = Backoff(RETRY_MAX, base=RETRY_MIN)
        if item.acked and self._seen_again(item.key, item.device):
            return  # stored since it was queued (it came from the junk lane: acked already)
        while True:
            if not item.acked and self._stale(item.connection):
                return  # delivered again on the current connection; not stored twice for it
            try:
                finding = self.handle(item.topic, item.payload, junk=item.acked)
                break
            except StoreAway:  # logged: no ack, the broker keeps it
                if stop.wait(next(delays)):
                    return  # stopping: unacked, the broker delivers it again
        self._remember(item, finding)
        if item.qos > 0 and not item.acked:
            with self._conn_lock:
                # A message of an earlier connection the broker forgot (no session) is stored
                # but not acked: its mid means nothing on this connection.
                if item.connection == self._connection:
                    self.client.ack(item.mid, item.qos)

    def _remember(self, item: Item, finding: Finding) -> None:
        """Note a message the store now holds (its transaction committed), so a copy of it is
        counted without being judged again."""
        stored = finding.kind in LINKED or finding.kind in ("duplicate", "birth")
        if not (stored and item.key and finding.did):
            return
        did = sys.intern(finding.did)
        seen = gate.Seen(did, sys.intern(device_id_of(did)), finding.kind != "birth")
        self.recent.add(item.key, seen)

    def _periodic(self) -> None:
        """Closed epochs, revisions and unpublished attestations, the registered dids and the
        counts of refused messages; a failure waits for the next tick."""
        try:
            self._registered = registry.registered_dids(self.db)
            self._flush_refused()
            self.tick()
            self.publish_pending()
        except Exception:
            log.exception("attestations not signed or published this tick")

    def _flush_refused(self) -> None:
        with self._refused_lock:
            refused, self.refused = self.refused, Counter()
            duplicates, self.duplicates = self.duplicates, Counter()
        self.counts["duplicate"] += duplicates.total()
        try:
            with self.db.transaction() as tx:
                for kind, n in refused.items():
                    chains.count(tx, "", kind, n)
                for did, n in duplicates.items():
                    chains.count(tx, did, "duplicate", n)
        except Exception:
            with self._refused_lock:
                self.refused.update(refused)
                self.duplicates.update(duplicates)
            self.counts["duplicate"] -= duplicates.total()
            raise

    def publish_pending(self) -> None:
        """Publish (retained) the newest revision of every attestation not published yet,
        whoever signed it."""
        for did, start, revision, message in registry.unpublished(self.db):
            if not self.connected.is_set():
                return
            topic = f"{self.cfg.topic_prefix}/{device_id_of(did)}/attestation"
            info = self.client.publish(topic, message, qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=10)
            if info.is_published():
                registry.mark_published(self.db, did, start, revision)
                log.info("attestation for %s epoch %d revision %d published", did, start, revision)


def run(cfg: AttestorConfig, *, worker: int | None = None) -> int:
    """`attestor run`: one worker in this process, or `workers` child processes."""
    if cfg.workers > 1 and worker is None:
        return _supervise(cfg)
    # The store's password never reaches the log, whatever echoes it (a driver's error).
    for handler in logging.getLogger().handlers:
        handler.addFilter(Redact(cfg.store))
    ident = identity.load(cfg.key_file)
    w = Worker(cfg, ident, worker or 0)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info(
        "attestor %s worker %d: store %s, broker %s:%d, topics %s, inbox %d bytes",
        ident.did, worker or 0, safe_url(cfg.store), cfg.host, cfg.port, ", ".join(w.topics()),
        cfg.inbox_bytes,
    )  # fmt: skip
    w.run(stop)
    return 0


def _supervise(cfg: AttestorConfig) -> int:
    """Run `workers` worker processes; one that dies (a crash, the OOM killer) is started
    again, after a back-off that doubles while it keeps dying. SIGTERM/SIGINT stop them all."""
    assert cfg.source is not None, "workers > 1 needs the configuration in a file"
    cmd = [sys.executable, "-m", "gateway.attestor", "run", "-c", str(cfg.source)]
    stopping = threading.Event()
    lock = threading.Lock()
    procs: dict[int, subprocess.Popen[bytes]] = {}
    started: dict[int, float] = {}
    delays = {i: Backoff(RESTART_MAX, base=RESTART_MIN) for i in range(cfg.workers)}

    def start(i: int) -> None:
        with lock:
            if not stopping.is_set():
                procs[i] = subprocess.Popen([*cmd, "--worker", str(i)])
                started[i] = time.monotonic()

    def stop(*_: object) -> None:
        stopping.set()
        with lock:
            for p in procs.values():
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    for i in range(cfg.workers):
        start(i)
    due: dict[int, float] = {}  # workers waiting to be started again, and when
    while not stopping.is_set():
        now = time.monotonic()
        for i, p in list(procs.items()):
            if i in due or p.poll() is None:
                continue
            if now - started[i] >= RESTART_RESET:
                delays[i].reset()
            delay = next(delays[i])
            log.error(
                "attestor worker %d exited with %s; starting it again in %.0f s",
                i, p.returncode, delay,
            )  # fmt: skip
            due[i] = now + delay
        for i, when in list(due.items()):
            if now >= when:
                del due[i]
                start(i)
        stopping.wait(0.2)
    codes = [p.wait() for p in procs.values()]
    return 0 if stopping.is_set() else max(codes)
