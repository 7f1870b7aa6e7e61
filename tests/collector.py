"""An independent subscriber: paho-mqtt in its own thread, with a persistent session so that
it misses nothing across its own or the broker's restarts."""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.wire import cose, payloads


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    retain: bool


class Collector:
    def __init__(self, port: int, topic: str = "depin/v1/#", client_id: str = "collector") -> None:
        self.topic = topic
        self.messages: list[Received] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            clean_session=False,
            protocol=mqtt.MQTTv311,
        )
        self.client.reconnect_delay_set(0.1, 0.5)  # type: ignore[arg-type]  # paho sleeps floats
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.connected = threading.Event()
        self.client.connect_async("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        if not self.connected.wait(10):
            raise RuntimeError("collector could not connect")

    def _on_connect(self, client: mqtt.Client, *args: object) -> None:
        client.subscribe(self.topic, qos=1)
        self.connected.set()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Received(msg.topic, bytes(msg.payload), bool(msg.retain)))

    def batches(self) -> list[bytes]:
        with self._lock:
            return [m.payload for m in self.messages if m.topic.endswith("/batch")]

    def wait_for(self, predicate: object, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():  # type: ignore[operator]
                return True
            time.sleep(0.1)
        return False

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def unique_batches(messages: list[bytes]) -> list[tuple[int, bytes, payloads.Batch]]:
    """(seq, batch id, batch) once per batch, in order of first arrival; duplicates (same seq,
    same id) dropped. Raises on equivocation: one seq with two different batches."""
    seen: dict[int, bytes] = {}
    out = []
    for m in messages:
        payload = cose.verify1(m).payload
        bid = hashlib.sha256(payload).digest()
        b = payloads.decode_batch(payload)
        if b.seq in seen:
            assert seen[b.seq] == bid, f"equivocation at seq {b.seq}"
            continue
        seen[b.seq] = bid
        out.append((b.seq, bid, b))
    return out


def assert_unbroken_chain(batches: list[tuple[int, bytes, payloads.Batch]]) -> None:
    by_seq = {s: (bid, b) for s, bid, b in batches}
    seqs = sorted(by_seq)
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), f"gap in seqs {seqs}"
    assert seqs[0] == 0
    for s in seqs[1:]:
        assert by_seq[s][1].prev == by_seq[s - 1][0], f"prev of seq {s} does not link"
