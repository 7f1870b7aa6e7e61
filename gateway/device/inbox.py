"""Messages to the gateway: the topics it subscribes to, and which service handles what arrives.

Services route a topic filter to a handler; the uplink subscribes to every routed filter, in the
order they were routed, on each connect, and hands each message here. A message goes to the
handler of the first filter that matches its topic.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Protocol

# MQTT's filter rules (`+` one level, `#` the rest, `$` topics apart), as paho implements them
from paho.mqtt.client import topic_matches_sub as matches


class Handler(Protocol):
    def __call__(self, topic: str, payload: bytes) -> Awaitable[None]: ...


class Inbox:
    """The routes, in order; the uplink hands every message on a subscription to `deliver`."""

    def __init__(self) -> None:
        self._routes: list[tuple[str, Handler]] = []

    def route(self, topic_filter: str, handler: Handler) -> None:
        self._routes.append((topic_filter, handler))

    @property
    def filters(self) -> list[str]:
        return [f for f, _ in self._routes]

    async def deliver(self, topic: str, payload: bytes) -> None:
        for topic_filter, handler in self._routes:
            if matches(topic_filter, topic):
                await handler(topic, payload)
                return
