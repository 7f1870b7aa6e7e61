"""One attestor worker: MQTT in, store, attestations out.

paho-mqtt directly (not aiomqtt): with `manual_ack` a batch's PUBACK goes back only after the
transaction that stored it committed, so a worker killed mid-batch leaves the batch with the
broker, which delivers it again (to this worker's persistent session or to another member of
the shared group), and processing it twice is harmless.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import Counter

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway import identity
from gateway.attestor import chains, epochs, registry
from gateway.attestor.config import AttestorConfig
from gateway.attestor.db import Database
from gateway.errors import ConfigError
from gateway.identity import Identity, device_id_of
from gateway.verify import Examined, Finding, examine

log = logging.getLogger("gateway.attestor")
#: seqs at or above this cannot be stored (a signed 64-bit column; seq + 1 is looked up too)
MAX_SEQ = 2**63 - 1
QUEUE = 2000  # messages taken from the broker before they are stored (flow control beyond it)


def _password(cfg: AttestorConfig) -> str | None:
    if cfg.password_file is not None:
        return cfg.password_file.read_text().rstrip("\r\n")
    if cfg.password_env is not None:
        value = os.environ.get(cfg.password_env)
        if value is None:
            raise ConfigError([f"broker.password_env: variable {cfg.password_env} is not set"])
        return value
    return None


class Worker:
    def __init__(self, cfg: AttestorConfig, ident: Identity, index: int = 0) -> None:
        self.cfg = cfg
        self.identity = ident
        self.index = index
        self.db = Database(cfg.store)
        self.counts: Counter[str] = Counter()
        self.inbox: queue.Queue[tuple[str, bytes, int, int]] = queue.Queue(QUEUE)
        self.connected = threading.Event()
        self._known: set[str] = set()
        self._last_tick = 0.0
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            # Stable across restarts (the broker keeps the session's queue), unique per
            # attestor key, group and worker.
            client_id=f"att-{ident.device_id[-12:]}-{cfg.group}-{index}",
            clean_session=False,
            protocol=mqtt.MQTTv311,
            manual_ack=True,
        )
        if cfg.username is not None:
            self.client.username_pw_set(cfg.username, _password(cfg))
        if cfg.tls:
            self.client.tls_set(
                ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
                certfile=str(cfg.cert_file) if cfg.cert_file else None,
                keyfile=str(cfg.key_file_tls) if cfg.key_file_tls else None,
            )
        self.client.max_inflight_messages_set(100)
        self.client.reconnect_delay_set(1, 5)
        self.client.on_connect = self._on_connect
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
        self, client: mqtt.Client, _u: object, _f: object, rc: object, _p: object = None
    ) -> None:
        if getattr(rc, "is_failure", False):
            log.warning("broker refused the attestor: %s", rc)
            return
        client.subscribe([(t, 1) for t in self.topics()])
        self.connected.set()

    def _on_disconnect(self, *_args: object) -> None:
        self.connected.clear()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        self.inbox.put((msg.topic, bytes(msg.payload), msg.mid, msg.qos))

    # --- the work (the worker's own thread) ---------------------------------------------------

    def registered(self, did: str) -> bool:
        if did in self._known:
            return True
        if registry.is_registered(self.db, did):
            self._known.add(did)
            return True
        return False

    def handle(self, topic: str, payload: bytes, now: float | None = None) -> Finding:
        """One message, whatever it holds; never raises on what arrives."""
        try:
            found = examine(payload, topic, registered=self.registered)
            if isinstance(found, Examined) and found.batch.seq >= MAX_SEQ:
                # Valid CBOR, but beyond what a store column (and any honest device) holds.
                finding = found.finding("malformed", f"seq beyond {MAX_SEQ - 1}")
                self._count(finding)
            elif isinstance(found, Examined):
                finding = chains.process_batch(self.db, found, now=now)
            else:
                finding = found
                if finding.kind == "birth" and not chains.process_birth(self.db, payload, now=now):
                    finding = Finding(
                        "malformed", found.did, None, found.batch_id, 0, "bad sensor list", topic
                    )
                if finding.forged:
                    self._count(finding)
        except Exception as e:  # a store outage or a bug: the message stays unacknowledged
            log.exception("message on %s not processed", topic)
            raise RuntimeError(f"not processed: {e}") from e
        self.counts[finding.kind] += 1
        if finding.kind == "equivocation":
            # The one finding that proves a device lied: both signed batches are kept.
            log.error(
                "ALARM: %s signed two different batches for seq %s; both kept as evidence",
                finding.did,
                finding.seq,
            )
        elif finding.forged:
            log.warning(
                "%s %s seq %s on %s: %s", finding.kind, finding.did, finding.seq, topic,
                finding.detail,
            )  # fmt: skip
        return finding

    def _count(self, f: Finding) -> None:
        # Unknown or unproven senders are counted together: they must not grow the store, and
        # a message whose signature failed proves nothing about the device it names.
        proven = f.batch_id is not None and f.kind != "unknown-device"
        did = f.did if f.did and proven and self.registered(f.did) else ""
        with self.db.transaction() as tx:
            chains.count(tx, did, f.kind)

    def tick(self, now: float | None = None) -> int:
        """Score and sign every closed epoch not attested yet; returns how many this worker
        signed (another worker may have signed some first)."""
        now = time.time() if now is None else now
        length = self.cfg.epoch_seconds
        closed = epochs.epoch_of(now - self.cfg.grace, length)  # epochs ending by then
        signed = 0
        for did, first, registered in registry.attestable(self.db):
            # Epochs start at the device's registration at the earliest: a device's clock (a
            # Pi without a real-time clock starts in 1970) cannot send the attestor back in time.
            start = epochs.epoch_of(max(first, registered), length)
            done = registry.last_attested(self.db, did)
            if done is not None:
                start = max(start, done + length)
            try:
                while start + length <= closed:
                    message = epochs.attest(self.db, self.identity, did, start, length)
                    signed += message is not None
                    start += length
            except Exception:  # one device's odd data must not stop the others' attestations
                log.exception("epoch %d of %s not attested", start, did)
        return signed

    def run(self, stop: threading.Event) -> None:
        self.client.connect_async(self.cfg.host, self.cfg.port, keepalive=30)
        self.client.loop_start()
        try:
            while not stop.is_set():
                try:
                    topic, payload, mid, qos = self.inbox.get(timeout=0.2)
                except queue.Empty:
                    pass
                else:
                    try:
                        self.handle(topic, payload)
                    except RuntimeError:
                        time.sleep(1.0)  # the store is away: no ack, the broker keeps it
                        continue
                    if qos > 0:
                        self.client.ack(mid, qos)
                if time.monotonic() - self._last_tick >= self.cfg.tick:
                    self._last_tick = time.monotonic()
                    self.tick()
                    self.publish_pending()
        finally:
            self.client.disconnect()
            self.client.loop_stop()
            self.db.close()

    def publish_pending(self) -> None:
        """Publish (retained) the attestations not published yet, whoever signed them."""
        for did, start, message in registry.unpublished(self.db):
            if not self.connected.is_set():
                return
            topic = f"{self.cfg.topic_prefix}/{device_id_of(did)}/attestation"
            info = self.client.publish(topic, message, qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=10)
            if info.is_published():
                registry.mark_published(self.db, did, start)
                log.info("attestation for %s epoch %d published", did, start)


def run(cfg: AttestorConfig, *, worker: int | None = None) -> int:
    """`attestor run`: one worker in this process, or `workers` child processes."""
    if cfg.workers > 1 and worker is None:
        return _supervise(cfg)
    ident = identity.load(cfg.key_file)
    w = Worker(cfg, ident, worker or 0)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info(
        "attestor %s worker %d: store %s, broker %s:%d, topics %s",
        ident.did, worker or 0, _safe(cfg.store), cfg.host, cfg.port, ", ".join(w.topics()),
    )  # fmt: skip
    w.run(stop)
    return 0


def _safe(url: str) -> str:
    """The store url without its password, for the log."""
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        cred, host = rest.rsplit("@", 1)
        return f"{scheme}://{cred.split(':', 1)[0]}@{host}"
    return url


def _supervise(cfg: AttestorConfig) -> int:
    assert cfg.source is not None, "workers > 1 needs the configuration in a file"
    cmd = [sys.executable, "-m", "gateway.attestor", "run", "-c", str(cfg.source)]
    procs = [subprocess.Popen([*cmd, "--worker", str(i)]) for i in range(cfg.workers)]
    stopping = threading.Event()

    def stop(*_: object) -> None:
        stopping.set()
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    codes = [p.wait() for p in procs]
    return 0 if stopping.is_set() else max(codes)
