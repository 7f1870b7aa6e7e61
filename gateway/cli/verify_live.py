"""`depin-gateway verify --broker URL --seconds N`: the verifier (gateway/wire/verify.py) fed
live from a broker, through the MQTT layer (gateway/mqtt/). Here, not in wire: verifying files
needs no MQTT stack at all."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import NoReturn

from gateway.core.errors import UplinkError
from gateway.mqtt import url as broker_url
from gateway.mqtt.backoff import Backoff
from gateway.mqtt.connect import ClientSettings
from gateway.mqtt.subscribe import Lost, Message, subscribe_forever
from gateway.wire import limits
from gateway.wire.identity import device_id_of
from gateway.wire.verify import Finding, Tally, Verifier

#: The most device chains a live verifier keeps when it was given no bound: anyone with publish
#: rights can show it a new throwaway device per message. The least recently touched chain is
#: forgotten first; a device that comes back starts a new chain (docs/verification.md).
LIVE_MAX_CHAINS = 10_000
#: The seqs of each chain a live verifier keeps links of when it was given no window: a chain
#: that runs for months would otherwise hold every link (docs/verification.md).
LIVE_WINDOW = 100_000


def with_topic_note(f: Finding, topic: str, prefix: str) -> Finding:
    """A message on another device's topic keeps its verdict (the signature names the signer)
    but says so: dashboards keyed by topic would misattribute it."""
    parts = topic[len(prefix) + 1 :].split("/") if topic.startswith(prefix + "/") else []
    if f.did and parts and parts[0] != device_id_of(f.did):
        return replace(f, detail=f"{f.detail} (published under device {parts[0]})")
    return f


async def verify_live(
    url: str,
    *,
    seconds: float,
    prefix: str = "depin/v1",
    verifier: Verifier,
    tls: bool = False,
    ca_file: Path | str | None = None,
    username: str | None = None,
    password: str | None = None,
    on_finding: Callable[[Finding], None] | None = None,
) -> Tally:
    """Subscribe to every device's batch and birth topics for `seconds` and check each message.
    Speaks MQTT 5 and falls back to 3.1.1 when the broker refuses it. `url` as `--broker`
    takes it (gateway/mqtt/url.py; a bare host:port means mqtt://); `tls` or a `ca_file`
    without mqtts:// still use TLS. A broker that cannot be reached, or is lost before the
    time is up, raises UplinkError: a verdict on part of the time would look like a whole one.
    A `verifier` without a chain bound gets LIVE_MAX_CHAINS, one without a window LIVE_WINDOW.
    Returns the count of each kind (each finding goes to `on_finding` and is not kept), so
    memory does not grow with the messages seen.
    """
    if verifier.max_chains is None:
        verifier.max_chains = LIVE_MAX_CHAINS
    if verifier.window is None:
        verifier.window = LIVE_WINDOW
    where = broker_url.parse(url, where="--broker", bare=True)
    settings = ClientSettings(
        host=where.host,
        port=where.port,
        tls=tls or where.tls,
        ca_file=ca_file,
        username=username,
        password=password,
        timeout=max(1.0, min(10.0, seconds)),
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    tally = Tally()
    subscribed = asyncio.Event()

    def handle(msg: Message) -> None:
        # Judged from its length on its topic before anything else (gateway/wire/limits.py).
        big = limits.too_big(msg.topic, len(msg.payload))
        if big is not None:
            f = Finding("malformed", None, None, None, 0, big, msg.topic)
            verifier.counts[f.kind] += 1
        else:
            f = with_topic_note(verifier.check(msg.payload, source=msg.topic), msg.topic, prefix)
        tally.add(f)
        if on_finding is not None:
            on_finding(f)

    def lost(e: Lost) -> NoReturn:
        raise UplinkError(f"broker {settings.where}: {e.error}") from e.error

    follow = asyncio.create_task(
        subscribe_forever(
            settings,
            [(f"{prefix}/+/batch", 1), (f"{prefix}/+/birth", 1)],
            handle,
            backoff=Backoff(1.0),  # never waited on: the first loss ends it
            on_subscribed=lambda _protocol: subscribed.set(),
            on_lost=lost,
        ),
        name="verify-live",
    )
    waiting = asyncio.create_task(subscribed.wait())
    try:
        # The time counts from the start, the connection included, as it always did; but a
        # broker that does not answer in it is an error, not an empty verdict.
        await asyncio.wait({follow, waiting}, return_when=asyncio.FIRST_COMPLETED)
        if not follow.done():
            await asyncio.wait({follow}, timeout=max(0.0, deadline - loop.time()))
        if follow.done():
            follow.result()  # raises what ended it
    finally:
        waiting.cancel()
        follow.cancel()
        await asyncio.gather(follow, waiting, return_exceptions=True)
    return tally
