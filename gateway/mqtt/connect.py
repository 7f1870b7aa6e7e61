"""Connecting to a broker (aiomqtt on paho-mqtt 2): MQTT 5 first, falling back to 3.1.1 when
the broker refuses 5 or does not answer its CONNECT.

One client recipe (`ClientSettings`) for the uplink, live verify, the demo's verifier and the
dashboard. The protocol is "auto" (5, then 3.1.1), "5" or "3.1.1"; what "auto" settled on is
returned, so a caller that reconnects can go straight to it next time.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from gateway.mqtt import tls

PROTOCOLS = ("auto", "5", "3.1.1")
# How long to wait for CONNACK. Some 3.1.1-only brokers neither answer nor close when they
# get an MQTT 5 CONNECT (they misread its properties as the client id's length).
CONNACK_TIMEOUT = 10.0
# CONNACK codes that mean "not this protocol version" (3.1.1: 1; 5: 0x84), as opposed to
# refusals that another protocol version would meet too (credentials, authorisation, bans).
_VERSION_CODES = frozenset({1, 0x84})


@dataclass(frozen=True, kw_only=True)
class ClientSettings:
    """What a client is made of, but for its protocol version. `timeout` bounds the wait for
    CONNACK and is every later call's default; `tls` uses gateway/mqtt/tls.py's context
    (made again for each connection, so renewed certificate files are read)."""

    host: str
    port: int
    tls: bool = False
    ca_file: Path | str | None = None
    cert_file: Path | str | None = None
    key_file: Path | str | None = None
    identifier: str | None = None
    username: str | None = None
    password: str | None = None
    will: aiomqtt.Will | None = None
    keepalive: int = 60
    timeout: float = CONNACK_TIMEOUT
    max_inflight: int | None = None
    max_queued_incoming: int | None = None
    #: MQTT 5's Session Expiry Interval, sent in the CONNECT; None sends none, which brokers
    #: take as 0 (some 3.1.1-only brokers answer a v5 CONNECT without properties at once with
    #: "unsupported protocol version", but hang on one with properties until CONNACK_TIMEOUT)
    session_expiry: int | None = None

    @property
    def where(self) -> str:
        """host:port, for messages (an IPv6 address in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def make_client(s: ClientSettings, protocol: str) -> aiomqtt.Client:
    """A client speaking `protocol` ("5" or "3.1.1"); nothing is sent before it is entered.
    Neither version keeps a session on the broker past the connection (3.1.1: clean session;
    5: clean start and a session expiry of 0 unless `session_expiry` says otherwise)."""
    v5 = protocol == "5"
    props = None
    if v5 and s.session_expiry is not None:
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        props.SessionExpiryInterval = s.session_expiry
    return aiomqtt.Client(
        s.host,
        s.port,
        identifier=s.identifier,
        username=s.username,
        password=s.password,
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        will=s.will,
        keepalive=s.keepalive,
        timeout=s.timeout,
        max_inflight_messages=s.max_inflight,
        max_queued_incoming_messages=s.max_queued_incoming,
        tls_context=tls.context(s.ca_file, s.cert_file, s.key_file) if s.tls else None,
        properties=props,
    )


def protocol_refused(e: aiomqtt.MqttError) -> bool:
    """Whether a failed connect is one that MQTT 3.1.1 might get past: a CONNACK refusing the
    protocol version, or no CONNACK at all after the TCP (and TLS) connect succeeded."""
    rc = getattr(e, "rc", None)
    if rc is not None:
        return int(getattr(rc, "value", rc)) in _VERSION_CODES
    text = str(e)
    # aiomqtt says "Operation timed out" when TCP connected but no CONNACK came: a 3.1.1-only
    # broker stuck on a v5 CONNECT, or one that dropped it. A refused or unreachable TCP
    # connect says otherwise, and 3.1.1 would not help there.
    if text == "Operation timed out" or "Disconnected" in text:
        return True
    low = text.lower()
    return not ("refused" in low or "timed out" in low or "no route" in low or "unreachable" in low)


def abandon(client: aiomqtt.Client) -> None:
    """Close the socket of a connect attempt that got no CONNACK; aiomqtt leaves it open."""
    paho = getattr(client, "_client", None)
    with contextlib.suppress(Exception):
        if paho is not None:
            paho.disconnect()


async def connect(
    stack: contextlib.AsyncExitStack, settings: ClientSettings, protocol: str = "auto"
) -> tuple[aiomqtt.Client, str]:
    """Connect, the client's exit on `stack` (leaving the stack disconnects); returns it and
    the protocol version it speaks ("5" or "3.1.1"). "auto" tries MQTT 5, then 3.1.1 when
    the broker refused 5 or did not answer; a refusal that 3.1.1 would meet too (nobody
    listening, bad credentials, not authorised) is raised at once. Raises aiomqtt.MqttError."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"MQTT protocol {protocol!r}: expected one of {', '.join(PROTOCOLS)}")
    order = ["5", "3.1.1"] if protocol == "auto" else [protocol]
    last: aiomqtt.MqttError | None = None
    for proto in order:
        client = make_client(settings, proto)
        try:
            await stack.enter_async_context(client)
        except aiomqtt.MqttError as e:
            last = e
            abandon(client)
            if not protocol_refused(e):
                raise  # nobody listening, or we are not welcome: 3.1.1 will not help
            continue
        return client, proto
    assert last is not None
    raise last
