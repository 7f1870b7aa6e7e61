"""The dashboard's MQTT side: one ordinary client that follows every gateway under the prefix.

aiomqtt, in the server's event loop, MQTT 3.1.1 (every broker speaks it, the demo's embedded one
only that). Retained messages (status, state, health, birth, attestation) fill the model as soon
as the subscription is made; batches follow live. A lost connection is retried with backoff for
as long as the dashboard runs, and the page shows the broker as disconnected meanwhile. Births
and batches are verified off the event loop (intake.py).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

from gateway.dashboard.intake import Intake
from gateway.dashboard.model import Fleet
from gateway.mqtt import url as broker_url
from gateway.mqtt.backoff import Backoff
from gateway.mqtt.connect import ClientSettings
from gateway.mqtt.subscribe import Lost, Message, subscribe_forever
from gateway.mqtt.url import BrokerUrl

log = logging.getLogger("gateway.dashboard")

BACKOFF_MAX = 30.0
QUEUE = 10_000  # messages received but not yet taken into the model; beyond, paho drops


@dataclass(frozen=True)
class Broker:
    host: str
    port: int
    tls: bool
    username: str | None = None
    password: str | None = None
    ca_file: Path | None = None

    @property
    def label(self) -> str:
        """Where, without credentials: for the log and the page."""
        return BrokerUrl(self.host, self.port, self.tls).label


def parse_broker(
    url: str,
    *,
    username: str | None = None,
    password: str | None = None,
    ca_file: Path | None = None,
) -> Broker:
    """`--broker`: what gateway/mqtt/url.py accepts, a bare host[:port] meaning mqtt://; a
    CA file implies TLS."""
    u = broker_url.parse(
        url,
        where="--broker",
        bare=True,
        tls=ca_file is not None,
        credentials="use --username and --password-file",
    )
    return Broker(u.host, u.port, u.tls, username, password, ca_file)


async def follow(fleet: Fleet, broker: Broker, *, backoff_max: float = BACKOFF_MAX) -> None:
    """Keep the fleet model fed from the broker until cancelled."""
    settings = ClientSettings(
        host=broker.host,
        port=broker.port,
        tls=broker.tls,
        ca_file=broker.ca_file,
        identifier=f"depin-dashboard-{secrets.token_hex(4)}",
        username=broker.username,
        password=broker.password,
        keepalive=30,
        max_queued_incoming=QUEUE,
    )

    def subscribed(_protocol: str) -> None:
        fleet.set_broker(True)
        log.info("subscribed to %s/+/… at %s", fleet.prefix, broker.label)

    intake = Intake(fleet, asyncio.get_running_loop())

    def handle(msg: Message) -> None:
        try:
            # MQTT 3.1.1: the broker sets retain only on what it sends because of the
            # subscription (stored, perhaps long ago), never on live messages.
            intake.submit(msg.topic, msg.payload, retained=msg.retained)
        except Exception:  # a bug on one message must not stop the dashboard
            log.exception("cannot take the message on %s", msg.topic)

    def lost(e: Lost) -> None:
        fleet.set_broker(False, str(e.error) or type(e.error).__name__)
        log.warning("broker %s: %s; again in %.0f s", broker.label, e.error, e.retry_in)

    intake.start()
    try:
        await subscribe_forever(
            settings,
            fleet.topics(),
            handle,
            backoff=Backoff(backoff_max, base=1.0),
            protocol="3.1.1",
            on_subscribed=subscribed,
            on_lost=lost,
        )
    finally:
        intake.close()
