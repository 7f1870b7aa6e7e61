"""The MQTT layer (gateway/mqtt/) against real brokers, mosquitto (MQTT 5, TLS) and amqtt (3.1.1
only): the protocol it settles on, what it does not retry in 3.1.1, following a broker across
a restart, TLS with a client certificate for the aiomqtt clients and the attestor's paho."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import aiomqtt
import pytest

from gateway.mqtt import connect as mqtt_connect
from gateway.mqtt.backoff import Backoff
from gateway.mqtt.connect import ClientSettings, connect
from gateway.mqtt.subscribe import Lost, Message, subscribe_forever
from tests.brokers import Mosquitto, amqtt_broker, free_port, tls_mosquitto
from tests.certs import make_pki


def _asked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The protocol versions `connect` makes clients for, in order."""
    asked: list[str] = []
    make = mqtt_connect.make_client

    def recording(s: ClientSettings, protocol: str) -> aiomqtt.Client:
        asked.append(protocol)
        return make(s, protocol)

    monkeypatch.setattr(mqtt_connect, "make_client", recording)
    return asked


async def _round_trip(client: aiomqtt.Client, topic: str) -> bytes:
    await client.subscribe(topic, qos=1)
    await client.publish(topic, b"here", qos=1)
    async with asyncio.timeout(5):
        async for msg in client.messages:
            assert isinstance(msg.payload, bytes)
            return msg.payload
    raise AssertionError("no message")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize(
    ("expiry", "slow"),
    [
        (None, False),  # amqtt refuses a v5 CONNECT without properties at once (0x84)
        (0, True),  # and hangs on one with properties: 3.1.1 after the CONNACK timeout
    ],
)
def test_auto_settles_on_3_1_1_where_the_broker_has_no_mqtt_5(
    monkeypatch: pytest.MonkeyPatch, expiry: int | None, slow: bool
) -> None:
    asked = _asked(monkeypatch)

    async def run() -> tuple[str, bytes]:
        async with amqtt_broker() as port, contextlib.AsyncExitStack() as stack:
            s = ClientSettings(host="127.0.0.1", port=port, timeout=2, session_expiry=expiry)
            client, protocol = await connect(stack, s, "auto")
            return protocol, await _round_trip(client, "layer/fallback")

    started = time.monotonic()
    assert asyncio.run(run()) == ("3.1.1", b"here")
    assert (time.monotonic() - started >= 2) is slow
    assert asked == ["5", "3.1.1"]


def test_auto_speaks_5_where_the_broker_has_it(
    mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = _asked(monkeypatch)

    async def run() -> tuple[str, bytes]:
        async with contextlib.AsyncExitStack() as stack:
            s = ClientSettings(host="127.0.0.1", port=mosquitto.port)
            client, protocol = await connect(stack, s, "auto")
            return protocol, await _round_trip(client, "layer/five")

    assert asyncio.run(run()) == ("5", b"here")
    assert asked == ["5"]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_a_fixed_protocol_is_the_only_one_tried(
    mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch, protocol: str
) -> None:
    asked = _asked(monkeypatch)

    async def run() -> str:
        async with contextlib.AsyncExitStack() as stack:
            s = ClientSettings(host="127.0.0.1", port=mosquitto.port)
            return (await connect(stack, s, protocol))[1]

    assert asyncio.run(run()) == protocol
    assert asked == [protocol]


def test_nobody_listening_is_not_tried_again_in_3_1_1(monkeypatch: pytest.MonkeyPatch) -> None:
    asked = _asked(monkeypatch)
    port = free_port()

    async def run() -> None:
        async with contextlib.AsyncExitStack() as stack:
            await connect(stack, ClientSettings(host="127.0.0.1", port=port), "auto")

    started = time.monotonic()
    with pytest.raises(aiomqtt.MqttError, match="refused"):
        asyncio.run(run())
    assert time.monotonic() - started < 5
    assert asked == ["5"]


def test_bad_credentials_are_not_tried_again_in_3_1_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = Mosquitto(tmp_path / "broker", listener_extra="allow_anonymous false")
    broker.start()
    asked = _asked(monkeypatch)

    async def run() -> None:
        async with contextlib.AsyncExitStack() as stack:
            s = ClientSettings(host="127.0.0.1", port=broker.port, username="u", password="p")
            await connect(stack, s, "auto")

    try:
        with pytest.raises(aiomqtt.MqttCodeError):
            asyncio.run(run())
    finally:
        broker.stop()
    assert asked == ["5"]


# --- following a broker -----------------------------------------------------------------------


async def _publish(port: int, topic: str, payload: bytes, *, retain: bool = False) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.publish(topic, payload, qos=1, retain=retain)


async def _until(check: Callable[[], bool], seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not check():
            await asyncio.sleep(0.02)


def test_follows_across_a_broker_restart(mosquitto: Mosquitto) -> None:
    """Retained first, then live; a lost broker is reported and followed again once back, the
    backoff starting over after the new subscription."""
    got: list[Message] = []
    subscribed: list[str] = []
    lost: list[Lost] = []
    backoff = Backoff(0.4, base=0.1)

    async def run() -> None:
        await _publish(mosquitto.port, "f/a/state", b"kept", retain=True)
        s = ClientSettings(host="127.0.0.1", port=mosquitto.port, timeout=2)
        follow = asyncio.create_task(
            subscribe_forever(
                s,
                [("f/+/state", 1), ("f/+/batch", 1)],
                got.append,
                backoff=backoff,
                on_subscribed=subscribed.append,
                on_lost=lost.append,
            )
        )
        try:
            await _until(lambda: len(got) == 1)
            await _publish(mosquitto.port, "f/a/batch", b"live")
            await _until(lambda: len(got) == 2)
            await asyncio.to_thread(mosquitto.stop)
            await _until(lambda: len(lost) >= 2)  # the loss, then an attempt that failed
            await asyncio.to_thread(mosquitto.start)
            await _until(lambda: len(subscribed) == 2)
            await _publish(mosquitto.port, "f/a/batch", b"again")
            await _until(lambda: got[-1].payload == b"again")
        finally:
            follow.cancel()
            await asyncio.gather(follow, return_exceptions=True)

    asyncio.run(run())
    assert [(m.topic, m.payload, m.retained) for m in got[:2]] == [
        ("f/a/state", b"kept", True),
        ("f/a/batch", b"live", False),
    ]
    assert subscribed == ["5", "5"]
    assert all(x.subscribed for x in lost)
    assert all(0 < x.retry_in <= 0.4 for x in lost)
    assert next(backoff) <= 0.1  # reset by the second subscription


def test_on_lost_may_end_the_follow() -> None:
    """Live verify and the demo give up when the first connection fails."""
    port = free_port()
    seen: list[Lost] = []

    def lost(e: Lost) -> None:
        seen.append(e)
        raise RuntimeError(f"gave up: {e.error}")

    async def run() -> None:
        s = ClientSettings(host="127.0.0.1", port=port)
        await subscribe_forever(s, [("x/#", 0)], lambda m: None, backoff=Backoff(1.0), on_lost=lost)

    with pytest.raises(RuntimeError, match=r"gave up: .*refused"):
        asyncio.run(run())
    assert len(seen) == 1 and not seen[0].subscribed


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_follows_a_broker_without_mqtt_5_in_3_1_1_after_the_first_attempt(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked = _asked(monkeypatch)
    got: list[Message] = []
    subscribed: list[str] = []

    async def run() -> None:
        async with amqtt_broker() as port:
            s = ClientSettings(host="127.0.0.1", port=port, timeout=2)
            follow = asyncio.create_task(
                subscribe_forever(
                    s,
                    [("g/#", 1)],
                    got.append,
                    backoff=Backoff(0.2),
                    on_subscribed=subscribed.append,
                )
            )
            try:
                await _until(lambda: bool(subscribed))
                v311 = aiomqtt.ProtocolVersion.V311
                async with aiomqtt.Client("127.0.0.1", port, protocol=v311) as client:
                    await client.publish("g/1", b"one", qos=1)
                await _until(lambda: bool(got))
            finally:
                follow.cancel()
                await asyncio.gather(follow, return_exceptions=True)

    asyncio.run(run())
    assert subscribed == ["3.1.1"] and asked == ["5", "3.1.1"]
    assert got[0].payload == b"one"


# --- TLS ---------------------------------------------------------------------------------------


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, dict[str, Path]]]:
    """A mosquitto that speaks TLS only and wants a client certificate."""
    pki = make_pki(tmp_path / "pki")
    with tls_mosquitto(tmp_path / "broker", pki) as broker:
        yield broker, pki


def test_tls_with_a_client_certificate(tls_broker: tuple[Mosquitto, dict[str, Path]]) -> None:
    broker, pki = tls_broker

    async def run(ca_file: Path | None) -> bytes:
        s = ClientSettings(
            host="127.0.0.1",
            port=broker.port,
            tls=True,
            ca_file=ca_file,
            cert_file=pki["client"],
            key_file=pki["client_key"],
            timeout=5,
        )
        async with contextlib.AsyncExitStack() as stack:
            client, _ = await connect(stack, s, "auto")
            return await _round_trip(client, "tls/x")

    assert asyncio.run(run(pki["ca"])) == b"here"
    # the broker's certificate is checked (against the system's trust store here), not
    # taken on trust
    with pytest.raises(aiomqtt.MqttError, match="CERTIFICATE_VERIFY_FAILED"):
        asyncio.run(run(None))


def test_the_attestor_takes_the_same_tls(
    tmp_path: Path, tls_broker: tuple[Mosquitto, dict[str, Path]]
) -> None:
    """The attestor keeps paho (manual acks) with the layer's TLS context."""
    from gateway.attestor import config as attestor_config
    from gateway.attestor.service import Worker
    from gateway.wire import identity

    broker, pki = tls_broker
    key = tmp_path / "attestor.key"
    ident = identity.generate(key)
    cfg = attestor_config.loads(
        f'[attestor]\nkey_file = "{key}"\nstore = "{tmp_path / "a.db"}"\n'
        f'[broker]\nurl = "mqtts://127.0.0.1:{broker.port}"\nca_file = "{pki["ca"]}"\n'
        f'cert_file = "{pki["client"]}"\nkey_file = "{pki["client_key"]}"\n'
    )
    w = Worker(cfg, ident)
    stop = threading.Event()
    t = threading.Thread(target=w.run, args=(stop,))
    t.start()
    try:
        assert w.connected.wait(10)
    finally:
        stop.set()
        t.join(10)


# --- live verify on the layer -----------------------------------------------------------------


def test_live_verify_of_a_broker_that_never_answers_is_an_error_not_an_empty_verdict() -> None:
    """A listener that takes the TCP connection and says nothing: the connect times out in
    MQTT 5 and in 3.1.1, past the verify's own seconds, and that is reported as such."""
    from gateway.cli.verify_live import verify_live
    from gateway.core.errors import UplinkError
    from gateway.wire.verify import Verifier

    async def run() -> None:
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server:
            await verify_live(f"mqtt://127.0.0.1:{port}", seconds=1, verifier=Verifier())

    with pytest.raises(UplinkError, match="timed out"):
        asyncio.run(run())


def test_live_verify_refuses_a_url_it_does_not_take() -> None:
    from gateway.cli.verify_live import verify_live
    from gateway.mqtt.url import BrokerUrlError
    from gateway.wire.verify import Verifier

    with pytest.raises(BrokerUrlError, match=r"^--broker: unsupported scheme tcp://"):
        asyncio.run(verify_live("tcp://127.0.0.1:1883", seconds=1, verifier=Verifier()))
