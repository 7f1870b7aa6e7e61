"""The MQTT layer (gateway/mqtt/) against real brokers: mosquitto (MQTT 5) and amqtt (3.1.1
only): the protocol it settles on, what it does not retry in 3.1.1."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiomqtt
import pytest

from gateway.mqtt import connect as mqtt_connect
from gateway.mqtt.connect import ClientSettings, connect
from tests.brokers import Mosquitto, free_port


@contextlib.asynccontextmanager
async def amqtt_broker() -> AsyncIterator[int]:
    """amqtt on a free loopback port: a broker that speaks MQTT 3.1.1 only."""
    from amqtt.broker import Broker

    port = free_port()
    broker = Broker(
        {
            "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
            "auth": {"allow-anonymous": True},
            "topic-check": {"enabled": False},
        }
    )
    await broker.start()
    try:
        yield port
    finally:
        await broker.shutdown()


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
def test_auto_settles_on_3_1_1_where_the_broker_has_no_mqtt_5(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked = _asked(monkeypatch)

    async def run() -> tuple[str, bytes]:
        async with amqtt_broker() as port, contextlib.AsyncExitStack() as stack:
            s = ClientSettings(host="127.0.0.1", port=port, timeout=5)
            client, protocol = await connect(stack, s, "auto")
            return protocol, await _round_trip(client, "layer/fallback")

    assert asyncio.run(run()) == ("3.1.1", b"here")
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
