"""Following a broker: connect, subscribe, hand every message over, and on a lost connection
start again after the backoff, until cancelled. Live verify, the demo's verifier and the
dashboard follow their brokers with it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

import aiomqtt

from gateway.mqtt.backoff import Backoff
from gateway.mqtt.connect import ClientSettings, connect


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    #: the broker sent it because of the subscription (kept, perhaps long ago), not live
    retained: bool


@dataclass(frozen=True)
class Lost:
    """A connection that could not be made or was lost."""

    error: Exception
    #: whether any connection of this follow got as far as its subscription
    subscribed: bool
    #: seconds until the next attempt (unless the callback ends the follow)
    retry_in: float


async def subscribe_forever(
    settings: ClientSettings,
    filters: Sequence[tuple[str, int]],
    handle: Callable[[Message], object],
    *,
    backoff: Backoff,
    protocol: str = "auto",
    on_subscribed: Callable[[str], None] | None = None,
    on_lost: Callable[[Lost], None] | None = None,
) -> NoReturn:
    """Follow `filters` (topic filter, QoS) on the broker of `settings`; never returns.

    After each subscription `on_subscribed(protocol version)` is called and the backoff starts
    again from its first step. When a connection cannot be made or is lost, `on_lost(Lost)`
    is called; it may raise to end the loop with that error, else the next attempt follows
    after `Lost.retry_in` seconds, the backoff's next delay. `handle` gets every message in
    arrival order (what it returns is ignored, what it raises ends the loop). "auto" (MQTT 5,
    falling back to 3.1.1: gateway/mqtt/connect.py) stays on 3.1.1 once a broker refused 5.
    """
    subscribed = False
    while True:
        try:
            async with contextlib.AsyncExitStack() as stack:
                client, used = await connect(stack, settings, protocol)
                if protocol == "auto" and used != "5":
                    protocol = used
                await client.subscribe(list(filters))
                subscribed = True
                backoff.reset()
                if on_subscribed is not None:
                    on_subscribed(used)
                async for msg in client.messages:
                    handle(Message(str(msg.topic), _bytes(msg.payload), msg.retain))
            # aiomqtt ends the iteration only with an error; were it to end without one:
            raise aiomqtt.MqttError("the broker closed the connection")
        # OSError: TLS setup (a CA file that cannot be read) and socket errors aiomqtt does
        # not wrap
        except (aiomqtt.MqttError, OSError) as e:
            delay = next(backoff)
            if on_lost is not None:
                on_lost(Lost(e, subscribed, delay))
        await asyncio.sleep(delay)


def _bytes(payload: object) -> bytes:
    """What the broker delivered, as bytes (aiomqtt types the payload more loosely)."""
    if isinstance(payload, bytes | bytearray):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode()
    return b""
