"""Messages to the gateway reach the service that handles their topic: the uplink subscribes to
what the services route, in their order, and a message goes to the first route that matches."""

from __future__ import annotations

import asyncio

from gateway.device.inbox import Handler, Inbox, matches


def test_topic_filters_match_as_the_broker_matches_them() -> None:
    node = "homeassistant/+/dg_1234/+/config"
    assert matches(node, "homeassistant/sensor/dg_1234/qabc/config")
    assert not matches(node, "homeassistant/sensor/dg_9999/qabc/config")  # another device
    assert not matches(node, "homeassistant/sensor/dg_1234/config")  # a level short
    assert matches("depin/v1/dev/model", "depin/v1/dev/model")
    assert not matches("depin/v1/dev/model", "depin/v1/dev/model/result")
    assert matches("depin/#", "depin/v1/dev/model/result") and matches("depin/#", "depin")


def test_each_message_goes_to_the_service_of_its_topic() -> None:
    got: list[tuple[str, str, bytes]] = []

    def handler(name: str) -> Handler:
        async def handle(topic: str, payload: bytes) -> None:
            got.append((name, topic, payload))

        return handle

    inbox = Inbox()
    inbox.route("depin/v1/dev/attestation", handler("attestation"))
    inbox.route("depin/v1/dev/model", handler("models"))
    inbox.route("homeassistant/status", handler("announce"))
    inbox.route("homeassistant/+/node/+/config", handler("retained"))
    # what the uplink subscribes to, in the order the services asked
    assert inbox.filters == [
        "depin/v1/dev/attestation",
        "depin/v1/dev/model",
        "homeassistant/status",
        "homeassistant/+/node/+/config",
    ]

    async def main() -> None:
        await inbox.deliver("depin/v1/dev/model", b"bundle")
        await inbox.deliver("homeassistant/status", b"online")
        await inbox.deliver("homeassistant/sensor/node/q1/config", b"{}")
        await inbox.deliver("somebody/else", b"x")  # subscribed by nobody: dropped

    asyncio.run(main())
    assert got == [
        ("models", "depin/v1/dev/model", b"bundle"),
        ("announce", "homeassistant/status", b"online"),
        ("retained", "homeassistant/sensor/node/q1/config", b"{}"),
    ]
