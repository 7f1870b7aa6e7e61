"""mosquitto with the ACL and limits of docs/broker.md, read from that page, against real
clients: a device publishes only under its own id, only the attestor publishes attestations,
dashboards only read, and a packet over the cap ends its sender's connection.

mosquitto drops a publish it does not authorise (an MQTT 5 client gets reason code 135, a
3.1.1 client nothing at all), so each test asserts on what the subscribers receive. Nothing
waits for a quiet period: after the forbidden publishes, a permitted message is sent through
the same broker, and whatever the broker let through would have reached each subscriber before
that message (one broker thread, delivered in order)."""

from __future__ import annotations

import queue
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from gateway.wire import limits
from gateway.wire.identity import Identity
from tests.brokers import Mosquitto, free_port

DOC = Path(__file__).resolve().parents[2] / "docs" / "broker.md"
WAIT = 10.0  # how long a message that must come may take before the test fails
NOT_AUTHORISED = 135


def doc_block(first_line: str) -> str:
    """The fenced block of docs/broker.md that starts with `first_line`."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", DOC.read_text(), re.S | re.M)
    found = [b for b in blocks if b.startswith(first_line + "\n")]
    assert len(found) == 1, f"docs/broker.md has {len(found)} blocks starting {first_line!r}"
    return str(found[0])


ACL = doc_block("# /etc/mosquitto/depin.acl")
LIMITS = doc_block("# /etc/mosquitto/conf.d/depin-limits.conf")


def device_id() -> str:
    return Identity.from_private_key(Ed25519PrivateKey.generate()).device_id


A, B = device_id(), device_id()
SERVICES = ("depin-attestor", "depin-models", "depin-dashboard")


def password(user: str) -> str:
    return f"secret-of-{user}"


class Brokers:
    """One mosquitto with the documented ACL and limits: `devices` is the port with
    `use_username_as_clientid`, `services` the one the attestor and dashboards use."""

    def __init__(self, broker: Mosquitto, devices: int) -> None:
        self.broker = broker
        self.services = broker.port
        self.devices = devices


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[Brokers]:
    folder = tmp_path / "broker"
    folder.mkdir()
    pw = folder / "depin.passwd"
    for i, user in enumerate((A, B, *SERVICES)):
        create = ["-c"] if i == 0 else []
        subprocess.run(
            ["mosquitto_passwd", *create, "-b", str(pw), user, password(user)],
            check=True,
            capture_output=True,
        )
    acl = folder / "depin.acl"
    acl.write_text(ACL)
    devices = free_port()
    broker = Mosquitto(
        folder,
        listener_extra=(
            f"allow_anonymous false\npassword_file {pw}\nacl_file {acl}\n{LIMITS}\n"
            f"listener {devices} 127.0.0.1\nuse_username_as_clientid true\n"
        ),
    )
    broker.start()
    try:
        yield Brokers(broker, devices)
    finally:
        broker.stop()


class Client:
    """A paho client in its own thread that keeps what it receives and each PUBACK's reason."""

    def __init__(
        self, port: int, user: str, *, protocol: int = mqtt.MQTTv5, client_id: str = ""
    ) -> None:
        self.protocol = protocol
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.connected = threading.Event()
        self.disconnected = threading.Event()
        self._acks: dict[int, int] = {}
        self._subacks: dict[int, list[int]] = {}
        self._done = threading.Condition()
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id or f"{user[-12:]}-{id(self)}",
            protocol=protocol,  # type: ignore[arg-type]
        )
        self.c.username_pw_set(user, password(user))
        self.c.on_connect = lambda *_a: self.connected.set()
        self.c.on_disconnect = lambda *_a: self.disconnected.set()
        self.c.on_message = lambda _c, _u, m: self.messages.put((m.topic, bytes(m.payload)))
        self.c.on_publish = self._on_publish
        self.c.on_subscribe = self._on_subscribe
        self.c.connect("127.0.0.1", port, keepalive=30)
        self.c.loop_start()
        assert self.connected.wait(WAIT), f"{user} could not connect"

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: ReasonCode, _p: Any) -> None:
        with self._done:
            self._acks[mid] = rc.value
            self._done.notify_all()

    def _on_subscribe(self, _c: Any, _u: Any, mid: int, rcs: list[ReasonCode], _p: Any) -> None:
        with self._done:
            self._subacks[mid] = [r.value for r in rcs]
            self._done.notify_all()

    def subscribe(self, *filters: str) -> list[int]:
        _rc, mid = self.c.subscribe([(f, 1) for f in filters])
        assert mid is not None
        with self._done:
            assert self._done.wait_for(lambda: mid in self._subacks, WAIT), "no SUBACK"
            return self._subacks[mid]

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> int:
        """Publish at QoS 1 and wait for the PUBACK: 0 when it succeeded (MQTT 5's "no matching
        subscribers", 16, is a success too), else its reason code; always 0 under MQTT 3.1.1."""
        mid = self.c.publish(topic, payload, qos=1, retain=retain).mid
        with self._done:
            assert self._done.wait_for(lambda: mid in self._acks, WAIT), f"no PUBACK for {topic}"
            rc = self._acks[mid]
        return 0 if rc < 128 else rc

    def until(self, topic: str, payload: bytes) -> list[tuple[str, bytes]]:
        """Everything received before (topic, payload), which must come."""
        before: list[tuple[str, bytes]] = []
        while True:
            try:
                got = self.messages.get(timeout=WAIT)
            except queue.Empty:
                raise AssertionError(f"{topic} {payload[:40]!r} never arrived") from None
            if got == (topic, payload):
                return before
            before.append(got)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in made:
        c.close()


def t(device: str, kind: str) -> str:
    return f"depin/v1/{device}/{kind}"


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311], ids=["mqtt5", "mqtt311"])
def test_a_device_cannot_publish_under_another_devices_id(
    brokers: Brokers, clients: list[Client], protocol: int
) -> None:
    attestor = Client(brokers.services, "depin-attestor")
    b = Client(brokers.devices, B)
    a = Client(brokers.devices, A, protocol=protocol)
    clients += [attestor, b, a]
    assert attestor.subscribe("$share/workers/depin/v1/+/batch") == [1]
    assert b.subscribe(t(B, "head")) == [1]
    assert b.publish(t(B, "birth"), b"B's birth", retain=True) == 0

    forged = [
        a.publish(t(B, "batch"), b"forged batch"),
        a.publish(t(B, "birth"), b"forged birth", retain=True),
        a.publish(t(B, "head"), b"forged head", retain=True),
        a.publish(t(B, "birth"), b"", retain=True),  # would clear B's retained birth
    ]
    expected = NOT_AUTHORISED if protocol == mqtt.MQTTv5 else 0
    assert forged == [expected] * 4
    # the positive control: A's own batch goes through, to the attestor's shared subscription
    assert a.publish(t(A, "batch"), b"A's batch") == 0

    assert attestor.until(t(A, "batch"), b"A's batch") == []
    assert b.publish(t(B, "head"), b"B's head", retain=True) == 0
    assert b.until(t(B, "head"), b"B's head") == []
    # what the broker keeps for B is B's own: a newcomer gets B's birth and B's head
    dashboard = Client(brokers.services, "depin-dashboard")
    clients.append(dashboard)
    dashboard.subscribe(t(B, "birth"), t(B, "head"))
    got = {dashboard.messages.get(timeout=WAIT) for _ in range(2)}
    assert got == {(t(B, "birth"), b"B's birth"), (t(B, "head"), b"B's head")}


def test_a_device_reads_nothing_of_another_device(brokers: Brokers, clients: list[Client]) -> None:
    a = Client(brokers.devices, A)
    b = Client(brokers.devices, B)
    clients += [a, b]
    a.subscribe(t(B, "head"), t(B, "attestation"), t(A, "head"))
    assert b.publish(t(B, "head"), b"B's head", retain=True) == 0

    assert a.publish(t(A, "head"), b"A's head") == 0
    assert a.until(t(A, "head"), b"A's head") == []
    # the positive control: B itself reads its head
    b.subscribe(t(B, "head"))
    assert b.messages.get(timeout=WAIT) == (t(B, "head"), b"B's head")


def test_only_the_attestor_publishes_attestations(brokers: Brokers, clients: list[Client]) -> None:
    a = Client(brokers.devices, A)
    dashboard = Client(brokers.services, "depin-dashboard")
    attestor = Client(brokers.services, "depin-attestor")
    clients += [a, dashboard, attestor]
    assert a.subscribe(t(A, "attestation")) == [1]
    assert dashboard.subscribe("depin/v1/#") == [1]

    assert a.publish(t(A, "attestation"), b"self-attested", retain=True) == NOT_AUTHORISED
    assert a.publish(t(B, "attestation"), b"A attests B", retain=True) == NOT_AUTHORISED
    # a dashboard only reads
    assert dashboard.publish(t(A, "attestation"), b"dashboard-attested") == NOT_AUTHORISED
    assert dashboard.publish(t(A, "batch"), b"dashboard's batch") == NOT_AUTHORISED
    assert dashboard.publish(t(A, "model"), b"dashboard's model") == NOT_AUTHORISED

    assert attestor.publish(t(A, "attestation"), b"the attestor's", retain=True) == 0
    assert a.until(t(A, "attestation"), b"the attestor's") == []
    assert dashboard.until(t(A, "attestation"), b"the attestor's") == []
    newcomer = Client(brokers.devices, A, client_id="ignored")
    clients.append(newcomer)
    newcomer.subscribe(t(A, "attestation"))
    assert newcomer.messages.get(timeout=WAIT) == (t(A, "attestation"), b"the attestor's")


def test_a_packet_over_the_cap_ends_the_senders_connection(
    brokers: Brokers, clients: list[Client]
) -> None:
    found = re.search(r"^max_packet_size (\d+)$", LIMITS, re.M)
    assert found, "the documented limits set no max_packet_size"
    cap = int(found.group(1))
    assert cap > limits.LARGEST, "the broker would refuse honest model bundles"
    a = Client(brokers.devices, A, protocol=mqtt.MQTTv311)
    models = Client(brokers.services, "depin-models")
    attestor = Client(brokers.services, "depin-attestor")
    # MQTT 3.1.1: the broker cannot announce its cap, so the client sends what it likes
    b = Client(brokers.devices, B, protocol=mqtt.MQTTv311)
    clients += [a, models, attestor, b]
    a.subscribe(t(A, "model"))
    attestor.subscribe("$share/workers/depin/v1/+/batch")

    bundle = bytes(limits.CAPS["model"])  # the largest honest message
    assert models.publish(t(A, "model"), bundle, retain=True) == 0
    assert a.messages.get(timeout=WAIT) == (t(A, "model"), bundle)

    b.c.publish(t(B, "batch"), bytes(cap), qos=1)
    assert b.disconnected.wait(WAIT), "the broker kept a client that sent more than its cap"
    assert a.publish(t(A, "batch"), b"A's batch") == 0
    assert attestor.until(t(A, "batch"), b"A's batch") == []


def test_no_account_takes_over_a_devices_session(brokers: Brokers, clients: list[Client]) -> None:
    b = Client(brokers.devices, B)
    clients.append(b)
    b.subscribe(t(B, "head"))
    # A connects with B's device id as its client id: the broker uses A's name instead
    intruder = Client(brokers.devices, A, client_id=B)
    clients.append(intruder)
    assert b.publish(t(B, "head"), b"still here") == 0
    assert b.until(t(B, "head"), b"still here") == []
    assert not b.disconnected.is_set()

    # the positive control: where client ids are taken as given, a second connection with the
    # same client id ends the first one
    first = Client(brokers.services, "depin-dashboard", client_id="dash")
    clients.append(first)
    clients.append(Client(brokers.services, "depin-dashboard", client_id="dash"))
    assert first.disconnected.wait(WAIT)
