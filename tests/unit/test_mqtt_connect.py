"""Which failed connects MQTT 3.1.1 may get past (gateway/mqtt/connect.py), and the client made
for each protocol version; the fallback itself against real brokers is in
tests/integration/test_mqtt_layer.py and tests/integration/test_uplink_fallback.py."""

from __future__ import annotations

import asyncio
import contextlib

import aiomqtt
import pytest
from aiomqtt.exceptions import MqttConnectError
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from gateway.mqtt.connect import ClientSettings, connect, make_client, protocol_refused


def _v5_code(value: int) -> ReasonCode:
    return ReasonCode(PacketTypes.CONNACK, identifier=value)


@pytest.mark.parametrize(
    ("error", "refused"),
    [
        # CONNACK: "not this protocol version", in 3.1.1 and in 5
        (MqttConnectError(1), True),
        (MqttConnectError(_v5_code(0x84)), True),
        # CONNACK refusals 3.1.1 would meet too
        (MqttConnectError(4), False),
        (MqttConnectError(5), False),
        (MqttConnectError(_v5_code(0x86)), False),  # bad user name or password
        (MqttConnectError(_v5_code(0x87)), False),  # not authorised
        (MqttConnectError(_v5_code(0x8A)), False),  # banned
        # no CONNACK after the TCP connect: a 3.1.1-only broker stuck on the v5 CONNECT
        (aiomqtt.MqttError("Operation timed out"), True),
        (aiomqtt.MqttError("Disconnected during message iteration"), True),
        # nobody listening, or no way there: 3.1.1 would not help
        (aiomqtt.MqttError("[Errno 111] Connection refused"), False),
        (aiomqtt.MqttError("timed out"), False),
        (aiomqtt.MqttError("[Errno 113] No route to host"), False),
        (aiomqtt.MqttError("[Errno 101] Network is unreachable"), False),
    ],
)
def test_what_counts_as_a_refused_protocol(error: aiomqtt.MqttError, refused: bool) -> None:
    assert protocol_refused(error) is refused


def test_each_version_is_asked_for_without_a_session() -> None:
    async def made() -> list[aiomqtt.Client]:
        s = ClientSettings(host="127.0.0.1", port=1883, identifier="x")
        said = ClientSettings(host="127.0.0.1", port=1883, identifier="x", session_expiry=0)
        return [make_client(s, "5"), make_client(said, "5"), make_client(said, "3.1.1")]

    v5, v5_said, v311 = asyncio.run(made())
    assert v5._client.protocol == v5_said._client.protocol == 5 and v311._client.protocol == 4
    assert v5._properties is None  # no properties: the broker takes a session expiry of 0
    assert v5_said._properties is not None
    assert getattr(v5_said._properties, "SessionExpiryInterval", None) == 0
    assert v311._properties is None and v311._client._clean_session is True


def test_where_brackets_an_ipv6_host() -> None:
    assert ClientSettings(host="::1", port=1884).where == "[::1]:1884"
    assert ClientSettings(host="b.example", port=8883, tls=True).where == "b.example:8883"


def test_an_unknown_protocol_is_refused_before_connecting() -> None:
    async def run() -> None:
        async with contextlib.AsyncExitStack() as stack:
            await connect(stack, ClientSettings(host="127.0.0.1", port=1), "4")

    with pytest.raises(ValueError, match="MQTT protocol '4'"):
        asyncio.run(run())
