"""The gateway's own sections, declared as `Field` dicts exactly like a plug-in's options, and
right below them the rules that span several of their fields.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gateway.config.check import Problems
from gateway.core.fields import Field, placement_problem
from gateway.mqtt import url as broker_url


def _nonempty(value: str) -> str | None:
    return None if value.strip() else "must not be empty"


# fullmatch, not match with "$": "$" also matches before a trailing newline, and `id = "pm\n"`
# would go into MQTT topics and SenML names.
_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def _sensor_id(value: str) -> str | None:
    if _ID.fullmatch(value):
        return None
    return (
        f"invalid sensor id {value!r}: use 1 to 64 lower-case letters, digits, '_' and '-', "
        "starting with a letter or digit, nothing else (no spaces, dots or newlines): it goes "
        "into SenML names like 'pm/pm2_5' and MQTT topics"
    )


def _topic_prefix(value: str) -> str | None:
    if not value:
        return "must not be empty"
    if "+" in value or "#" in value:
        return f"{value!r} must not contain the MQTT wildcards '+' or '#'"
    if value.startswith("/") or value.endswith("/"):
        return f"{value!r} must not start or end with '/'"
    if "//" in value:
        return f"{value!r} must not contain an empty topic level ('//')"
    if "\0" in value:
        return "must not contain a NUL character"
    return None


DEVICE: Mapping[str, Field] = {
    "name": Field(
        "str", "Human name of this gateway, shown on dashboards and in health.", check=_nonempty
    ),
    "key_file": Field(
        "path",
        "The device's Ed25519 private key; its public key is the device identity (did:key).",
        default="/var/lib/depin-gateway/device.key",
    ),
}

SPOOL: Mapping[str, Field] = {
    "path": Field(
        "path",
        "SQLite file holding pending readings and sealed, unacknowledged batches.",
        default="/var/lib/depin-gateway/spool.db",
    ),
    "max_size": Field(
        "size",
        "Largest spool; past it the oldest unsent readings are dropped (with a signed receipt).",
        default="256 MiB",
        min=64 * 1024,
    ),
    "commit_interval": Field(
        "duration",
        "How long readings may wait in memory before a durable commit; 0 commits every reading.",
        default="60 s",
        min=0,
        max=3600,
    ),
}

UPLINK: Mapping[str, Field] = {
    "url": Field(
        "str",
        "Broker address: mqtt://host[:port] (plain text, port 1883) or mqtts://host[:port] "
        "(TLS, port 8883).",
        default="mqtt://127.0.0.1:1883",
    ),
    "topic_prefix": Field(
        "str",
        "Topic prefix of everything the gateway publishes; no '+', '#' or leading/trailing '/'.",
        default="depin/v1",
        check=_topic_prefix,
    ),
    "client_id": Field(
        "str",
        "MQTT client id; unset derives one from the device id.",
        default=None,
        check=_nonempty,
    ),
    "protocol": Field(
        "str",
        'MQTT version: "auto" (MQTT 5, falling back to 3.1.1), "5" or "3.1.1".',
        default="auto",
        choices=("auto", "5", "3.1.1"),
    ),
    "ca_file": Field(
        "path",
        "CA certificate(s) to verify the broker (mqtts:// only); unset uses the system "
        "trust store.",
        default=None,
    ),
    "cert_file": Field(
        "path",
        "Client certificate for TLS client authentication (mqtts:// only; needs key_file).",
        default=None,
    ),
    "key_file": Field(
        "path", "Private key of cert_file (mqtts:// only; needs cert_file).", default=None
    ),
    "username": Field("str", "MQTT user name.", default=None, check=_nonempty),
    "password_file": Field(
        "path",
        "File whose content (trailing newline stripped) is the MQTT password; needs username.",
        default=None,
    ),
    "password_env": Field(
        "str",
        "Environment variable holding the MQTT password; needs username.",
        default=None,
        check=_nonempty,
    ),
    "insecure": Field(
        "bool",
        "Allow plain-text mqtt:// to a broker that is not on this machine (readings and the "
        "password travel unencrypted).",
        default=False,
    ),
    "batch_max_readings": Field(
        "int",
        "A batch is sealed when it holds this many readings.",
        default=500,
        min=1,
        max=10000,
    ),
    "batch_max_age": Field(
        "duration",
        "A batch is sealed when its oldest reading is this old.",
        default="60 s",
        min=1,
        max=86400,
    ),
    "max_inflight": Field(
        "int", "Published batches awaiting PUBACK at once.", default=8, min=1, max=100
    ),
    "keepalive": Field("duration", "MQTT keep-alive interval.", default="60 s", min=5, max=3600),
    "reconnect_max": Field(
        "duration",
        "Cap of the jittered exponential reconnect backoff.",
        default="60 s",
        min=1,
        max=3600,
    ),
}

CLOCK: Mapping[str, Field] = {
    "mode": Field(
        "str",
        'Whether wall time is trusted: "auto" (detect NTP sync), "synced" or "unsynced".',
        default="auto",
        choices=("auto", "synced", "unsynced"),
    ),
}

LOG: Mapping[str, Field] = {
    "level": Field(
        "str",
        "Least severe level logged.",
        default="info",
        choices=("debug", "info", "warning", "error"),
    ),
}


def _signers(values: tuple[str, ...]) -> str | None:
    # Imported here: identity pulls in cryptography, which the schema itself does not need.
    from gateway.wire.identity import public_key_of_did

    for n, did in enumerate(values):
        try:
            public_key_of_did(did)
        except (ValueError, TypeError):
            return (
                f"item {n} ({did!r}) is not an Ed25519 did:key "
                "(`depin-gateway identity show` prints a signer's)"
            )
    return None


_FLEET = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def _fleet(value: str) -> str | None:
    if _FLEET.fullmatch(value):
        return None
    return (
        f"invalid fleet name {value!r}: 1 to 128 letters, digits, '.', '_' and '-', starting "
        "with a letter or digit (bundles name it as 'fleet:<name>')"
    )


MODELS: Mapping[str, Field] = {
    "dir": Field(
        "path",
        "Where model updates received over MQTT are kept (active and shadow); default: a "
        "`models` directory beside the spool file.",
        default=None,
    ),
    "trusted_model_signers": Field(
        "str-list",
        "did:key identities whose signed model bundles the gateway takes over MQTT (topic "
        "`<prefix>/<device id>/model`); empty: model updates are refused and nothing is "
        "subscribed.",
        default=[],
        check=_signers,
    ),
    "fleet": Field(
        "str",
        "The fleet this gateway belongs to: it takes model bundles signed for `fleet:<this "
        "name>` besides those signed for its device id; not set: only those for its device id.",
        default=None,
        check=_fleet,
    ),
}

MONITOR: Mapping[str, Field] = {
    "state_interval": Field(
        "duration",
        "How often the retained `state` mirror (latest value and flags per quantity) is "
        "published, when something changed.",
        default="10 s",
        min=1,
        max=3600,
    ),
    "health_interval": Field(
        "duration",
        "How often the retained `health` message (queue, errors, uptime, memory ...) is published.",
        default="60 s",
        min=1,
        max=3600,
    ),
    "homeassistant": Field(
        "bool",
        "Announce the gateway to Home Assistant (MQTT discovery): one device, an entity per "
        "measured quantity and a few gateway entities.",
        default=True,
    ),
    "discovery_prefix": Field(
        "str",
        "Home Assistant's MQTT discovery prefix.",
        default="homeassistant",
        check=_topic_prefix,
    ),
    "attestors": Field(
        "str-list",
        "did:key identities of the attestors whose attestations about this device the gateway "
        "takes into its health (and Home Assistant); empty: none is taken, since anyone on the "
        "broker can sign one.",
        default=[],
        check=_signers,
    ),
}

#: keys every `[[sensor]]` has; the driver's own options (its CONFIG) come on top
SENSOR: Mapping[str, Field] = {
    "id": Field(
        "str",
        "Unique id: 1 to 64 lower-case letters, digits, '_' and '-', starting with a letter or "
        "digit; prefixes the names of the sensor's readings (`id/quantity`).",
        check=_sensor_id,
    ),
    "driver": Field("str", "Registered driver name (entry point group depin_gateway.drivers)."),
    "interval": Field(
        "duration",
        "Time between reads; default is the driver's own (default_interval).",
        default=None,
        min=0.01,
    ),
    "placement": Field(
        "str",
        'Where the sensor is, e.g. "indoor", "outdoor" or a room (case does not matter). '
        "Cross-sensor checks (the plausibility module) compare only sensors of one placement; "
        "all sensors without one are taken to be in one place.",
        default=None,
        check=placement_problem,
    ),
}

#: keys every `[[module]]` has; the module's own options (its CONFIG) come on top
MODULE: Mapping[str, Field] = {
    "id": Field("str", "Unique id of this module instance.", check=_nonempty),
    "kind": Field("str", "Registered module name (entry point group depin_gateway.modules)."),
    "budget": Field(
        "duration",
        "Time one call of the module may take; a call over it counts as a module error and its "
        "verdicts are replaced by the `module-error` flag.",
        default="20 ms",
        min=0.0001,
        max=10.0,
    ),
}

#: the single tables, in file order
SECTIONS: Mapping[str, Mapping[str, Field]] = {
    "device": DEVICE,
    "spool": SPOOL,
    "uplink": UPLINK,
    "clock": CLOCK,
    "log": LOG,
    "models": MODELS,
    "monitor": MONITOR,
}


# --------------------------------------------------------------------------- cross-field rules


def check_uplink(problems: Problems, up: dict[str, Any], given: Mapping[str, Any]) -> None:
    """Parse the URL into host/port/tls and check the rules between uplink keys."""
    url = up.get("url")
    tls: bool | None = None
    if isinstance(url, str):
        try:
            broker = broker_url.parse(
                url,
                where="uplink.url",
                credentials="set username and password_file or password_env",
            )
        except broker_url.BrokerUrlError as e:
            problems.add("uplink.url", e.reason)
        else:
            tls = broker.tls
            up["host"], up["port"], up["tls"] = broker
            if broker.plain_off_machine and not up.get("insecure"):
                problems.add(
                    "uplink.url",
                    f"plain-text MQTT to {broker.host!r}, which is not this machine, would send "
                    "readings and credentials unencrypted; use mqtts:// or set insecure = true",
                )
    if tls is False:
        for key in ("ca_file", "cert_file", "key_file"):
            if key in given:
                problems.add(
                    f"uplink.{key}", "TLS option with a plain-text mqtt:// url; use mqtts://"
                )
    for have, need in (("cert_file", "key_file"), ("key_file", "cert_file")):
        if have in given and need not in given:
            problems.add(
                f"uplink.{have}",
                f"{have} needs {need} too (a client certificate goes with its private key)",
            )
    if "password_file" in given and "password_env" in given:
        problems.add("uplink.password_env", "set password_file or password_env, not both")
    for key in ("password_file", "password_env"):
        if key in given and "username" not in given:
            problems.add(f"uplink.{key}", f"{key} needs username")
    for key in ("ca_file", "cert_file", "key_file", "password_file"):
        path = up.get(key)
        if isinstance(path, Path):
            if not path.exists():
                problems.add(f"uplink.{key}", f"{key} not found: {path}")
            elif not path.is_file():
                problems.add(f"uplink.{key}", f"{key} is not a file: {path}")
    env = up.get("password_env")
    if isinstance(env, str) and env and env not in os.environ:
        problems.add("uplink.password_env", f"environment variable {env!r} is not set")
