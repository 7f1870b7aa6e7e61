"""Home Assistant MQTT discovery: the retained config messages that make the gateway appear in
Home Assistant as one device with an entity per measured quantity and a few gateway entities.

Pure functions only; the daemon publishes what `discovery()` returns (retained), subscribes to
`subscriptions()` to learn which config topics of this device the broker still holds, clears the
ones `stale()` names with an empty retained payload, and announces again when Home Assistant
publishes `online` on `birth_topic()`. What appears in Home Assistant, and why the payloads look
the way they do, is in docs/home-assistant.md.

The entities read the gateway's own retained topics (spec section 8): `state` for the
measurements, `health` for the gateway entities, `status` (`online` / `offline`, the latter as
Last Will) for availability. Nothing here is random: topics, unique ids and entity ids derive
from the device id, the sensor id and the quantity name only, so a restart or a different sensor
order announces exactly the same bytes.

The Last Will only comes when the broker notices the connection is gone. A gateway that hangs
with its connection open, or whose Will the broker lost (a restart without persistence), would
leave its last values standing for good: measurements therefore also carry `expire_after`, a
few times the longest a live gateway leaves them without a fresh `state`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

__all__ = [
    "EXPIRE_FACTOR",
    "MANUFACTURER",
    "Sensor",
    "birth_topic",
    "discovery",
    "entity_id",
    "expire_after",
    "model",
    "node_id",
    "stale",
    "subscriptions",
]

MANUFACTURER = "depin-gateway"
#: The device's model: what it is. Its sensors' drivers follow in brackets.
MODEL = "Sensor gateway"

#: A measurement goes unavailable when no `state` came for this many times the longer of its
#: sensor's interval and the state publish interval: a live gateway publishes a changed state
#: at most that long after each reading, so three of them missed means it is gone, while a late
#: or lost message (state goes out at QoS 0) does not blank the value.
EXPIRE_FACTOR = 3


class Sensor(NamedTuple):
    """A configured sensor: its id, quantity -> SenML unit, and optionally its driver (named in
    the device's model) and its interval in seconds (for `expire_after`)."""

    id: str
    quantities: Mapping[str, str]
    driver: str | None = None
    interval: float | None = None


#: Home Assistant's spelling of µg/m³, with the MICRO SIGN U+00B5: the spelling of its constant
#: CONCENTRATION_MICROGRAMS_PER_CUBIC_METER until 2025.8, and still accepted afterwards (the MQTT
#: sensor maps it onto the GREEK SMALL LETTER MU U+03BC that newer releases use).
MICROGRAMS_PER_CUBIC_METER = "\u00b5g/m\u00b3"
CELSIUS = "\u00b0C"

_AVAILABLE, _NOT_AVAILABLE = "online", "offline"

# What Home Assistant accepts in a discovery topic's node_id and object_id.
_TOPIC_ID = re.compile(r"^[a-zA-Z0-9_-]+$")
# A quantity name usable as is in an object id: no '-', so "<sensor>-<quantity>" splits at the
# last '-' and two different (sensor, quantity) pairs never share an object id.
_PLAIN_QUANTITY = re.compile(r"^[a-zA-Z0-9_]+$")


@dataclass(frozen=True)
class _Known:
    """A quantity Home Assistant has a device class for."""

    device_class: str
    label: str
    #: SenML unit -> (Home Assistant unit, factor applied in the value template or None)
    units: Mapping[str, tuple[str, float | None]]
    precision: int


_KNOWN: Mapping[str, _Known] = {
    "temperature": _Known(
        "temperature", "Temperature", {"Cel": (CELSIUS, None), "K": ("K", None)}, 1
    ),
    "humidity": _Known("humidity", "Humidity", {"%RH": ("%", None), "%": ("%", None)}, 1),
    # The gateway reports pascals (SenML's base unit); hectopascals read better on a dashboard.
    "pressure": _Known(
        "atmospheric_pressure",
        "Pressure",
        {"Pa": ("hPa", 0.01), "hPa": ("hPa", None), "kPa": ("kPa", None)},
        1,
    ),
    "pm1": _Known("pm1", "PM1", {"ug/m3": (MICROGRAMS_PER_CUBIC_METER, None)}, 1),
    "pm2_5": _Known("pm25", "PM2.5", {"ug/m3": (MICROGRAMS_PER_CUBIC_METER, None)}, 1),
    "pm10": _Known("pm10", "PM10", {"ug/m3": (MICROGRAMS_PER_CUBIC_METER, None)}, 1),
    "co2": _Known("carbon_dioxide", "CO2", {"ppm": ("ppm", None)}, 0),
}

#: SenML unit -> Home Assistant's spelling, for quantities without a device class. None: no
#: unit (plain counts and ratios). A unit not listed is passed on as SenML spells it.
_SENML_UNITS: Mapping[str, str | None] = {
    "Cel": CELSIUS,
    "%RH": "%",
    "%EL": "%",
    "ug/m3": MICROGRAMS_PER_CUBIC_METER,
    "m3": "m\u00b3",
    "m/s2": "m/s\u00b2",
    "W/m2": "W/m\u00b2",
    "count": None,
    "/": None,
    "1": None,
}


# --- topics and ids -----------------------------------------------------------------------------


def expire_after(interval: float, state_interval: float) -> int:
    """Seconds after which Home Assistant shows a measurement unavailable when no `state` came:
    a whole number (what Home Assistant accepts), at least 1."""
    return max(1, math.ceil(EXPIRE_FACTOR * max(interval, state_interval)))


def _chip(driver: str) -> str:
    """A driver's name as its chip is written: "bme280" -> "BME280", "scd4x" -> "SCD4x" (the x
    stands for any of the family); names that are not a part number stay as they are."""
    m = re.fullmatch(r"([a-z]+[0-9]+[a-z]*?)(x?)", driver)
    return m[1].upper() + m[2] if m else driver


def model(drivers: Iterable[str | None]) -> str:
    """The device's model, e.g. "Sensor gateway (BME280, SCD4x, SDS011)": what the device is
    and what it measures with, in an order that does not depend on the configuration's."""
    chips = sorted({_chip(d) for d in drivers if d}, key=str.lower)
    return f"{MODEL} ({', '.join(chips)})" if chips else MODEL


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _slug(text: str) -> str:
    """Lower case [a-z0-9] runs joined by single '_', as Home Assistant's entity ids want."""
    return "_".join(re.findall(r"[a-z0-9]+", text.lower()))


def node_id(device_id: str) -> str:
    """The node_id of this device's discovery topics: the device id itself (a did:key's base58
    body qualifies); anything else is slugged and tagged with a hash so it stays distinct."""
    if not device_id:
        raise ValueError("device_id must not be empty")
    if _TOPIC_ID.fullmatch(device_id):
        return device_id
    return f"{_slug(device_id) or 'device'}_{_digest(device_id)[:8]}"


def _object_id(sensor_id: str, quantity: str) -> str:
    """The object_id of a measured quantity's discovery topic: "<sensor>-<quantity>" when both
    fit Home Assistant's character class (the gateway entities' object ids never contain '-').
    Odd names get a hash, which cannot be confused with either form."""
    if _TOPIC_ID.fullmatch(sensor_id) and _PLAIN_QUANTITY.fullmatch(quantity):
        return f"{sensor_id}-{quantity}"
    return f"q{_digest(sensor_id, quantity)[:16]}"


def entity_id(component: str, device_id: str, object_id: str) -> str:
    """The entity id asked for (`default_entity_id`): "<component>.depin_<last 8 characters of
    the device id>_<object id>", in the lower case [a-z0-9_] Home Assistant requires."""
    tail = re.sub(r"[^a-z0-9]", "", device_id.lower())[-8:] or "device"
    return f"{component}.{_slug(f'depin_{tail}_{object_id}')}"


def _check_prefix(name: str, value: str) -> None:
    if (
        not value
        or value.startswith("/")
        or value.endswith("/")
        or "//" in value
        or "+" in value
        or "#" in value
        or "\0" in value
    ):
        raise ValueError(f"{name} {value!r} is not a valid MQTT topic prefix")


def birth_topic(discovery_prefix: str) -> str:
    """Where Home Assistant publishes `online` when it (re)starts; announce again on it."""
    _check_prefix("discovery_prefix", discovery_prefix)
    return f"{discovery_prefix}/status"


def subscriptions(discovery_prefix: str, device_id: str) -> list[str]:
    """Topic filters that deliver this device's retained config topics (every component)."""
    _check_prefix("discovery_prefix", discovery_prefix)
    return [f"{discovery_prefix}/+/{node_id(device_id)}/+/config"]


def _is_ours(topic: str, discovery_prefix: str, node: str) -> bool:
    head = discovery_prefix + "/"
    if not topic.startswith(head):
        return False
    parts = topic[len(head) :].split("/")
    return (
        len(parts) == 4
        and re.fullmatch(r"\w+", parts[0], re.ASCII) is not None
        and parts[1] == node
        and _TOPIC_ID.fullmatch(parts[2]) is not None
        and parts[3] == "config"
    )


def stale(
    retained_topics: Iterable[str],
    current: Mapping[str, bytes],
    *,
    device_id: str,
    discovery_prefix: str,
) -> list[str]:
    """Config topics of this device seen retained on the broker that `current` no longer has
    (a sensor or quantity dropped from the configuration). Publish an empty retained payload to
    each: Home Assistant then removes the entity. Topics of other devices are never listed."""
    _check_prefix("discovery_prefix", discovery_prefix)
    node = node_id(device_id)
    return sorted(
        {t for t in retained_topics if t not in current and _is_ours(t, discovery_prefix, node)}
    )


# --- templates ----------------------------------------------------------------------------------
#
# Every template reads the JSON with dict.get() and `or {}`, so a missing sensor, a missing
# quantity or a null value renders "None", which Home Assistant's MQTT sensor takes as "no value"
# (state unknown) instead of raising on an undefined attribute. Numbers are guarded with
# `is number` so a numeric sensor is never handed text.


def _lit(text: str) -> str:
    """A Jinja string literal for any text; braces are escaped too, so no "}}" or "%}" ever
    appears inside a literal (Jinja reads the \\xNN escapes back)."""
    body = text.encode("unicode_escape").decode("ascii").replace("'", "\\'")
    return "'" + body.replace("{", "\\x7b").replace("}", "\\x7d") + "'"


def _obj(path: Sequence[str]) -> str:
    expr = "value_json"
    for key in path:
        expr = f"({expr}.get({_lit(key)}) or {{}})"
    return expr


def _number(path: Sequence[str], leaf: str, factor: float | None = None, digits: int = 2) -> str:
    head = f"{{% set v = {_obj(path)}.get({_lit(leaf)}) %}}"
    if factor is None:
        return head + "{{ v if v is number else None }}"
    return head + f"{{{{ (v * {factor!r}) | round({digits}) if v is number else None }}}}"


def _attributes(path: Sequence[str], fields: Mapping[str, str]) -> str:
    items = ", ".join(f"{_lit(name)}: r.get({_lit(key)})" for name, key in fields.items())
    return f"{{% set r = {_obj(path)} %}}{{{{ {{{items}}} | tojson }}}}"


# --- payloads -----------------------------------------------------------------------------------


def _encode(payload: Mapping[str, Any]) -> bytes:
    # ensure_ascii=False: the units travel as UTF-8 (µ is C2 B5, not a \u escape).
    return json.dumps(
        payload, ensure_ascii=False, sort_keys=True, separators=(",", ":"), allow_nan=False
    ).encode("utf-8")


def _measured(sensor_id: str, quantity: str, senml_unit: str, expire: int | None) -> dict[str, Any]:
    """The entity-specific part of a measured quantity's config."""
    path = ("sensors", sensor_id, quantity)
    known = _KNOWN.get(quantity)
    conversion = known.units.get(senml_unit) if known is not None else None
    out: dict[str, Any] = {"state_class": "measurement"}
    if expire is not None:
        out["expire_after"] = expire
    if known is not None and conversion is not None:
        unit, factor = conversion
        out["name"] = f"{known.label} ({sensor_id})"
        out["device_class"] = known.device_class
        out["unit_of_measurement"] = unit
        out["suggested_display_precision"] = known.precision
        out["value_template"] = _number(path, "v", factor, known.precision + 1)
    else:
        unit_or_none = _SENML_UNITS.get(senml_unit, senml_unit) if senml_unit.strip() else None
        out["name"] = f"{quantity} ({sensor_id})"
        if unit_or_none:
            out["unit_of_measurement"] = unit_or_none
        out["value_template"] = _number(path, "v")
    out["json_attributes_template"] = _attributes(
        path, {"anomaly_score": "as", "anomaly_flags": "af", "measured_at": "t"}
    )
    return out


def _gateway_entities() -> dict[tuple[str, str], dict[str, Any]]:
    """(component, object_id) -> entity-specific config of the gateway's own entities."""
    diag = {"entity_category": "diagnostic"}
    return {
        ("sensor", "queue_depth"): {
            **diag,
            "name": "Queue depth",
            "icon": "mdi:tray-full",
            "state_class": "measurement",
            "unit_of_measurement": "readings",
            "suggested_display_precision": 0,
            "value_template": _number((), "queue_depth"),
        },
        ("sensor", "oldest_unsent_age"): {
            **diag,
            "name": "Oldest unsent reading age",
            "device_class": "duration",
            "state_class": "measurement",
            "unit_of_measurement": "s",
            "suggested_display_precision": 0,
            "value_template": _number((), "oldest_unsent_age_s"),
        },
        ("sensor", "anomaly_rate"): {
            **diag,
            "name": "Anomaly rate",
            "icon": "mdi:alert-decagram-outline",
            "state_class": "measurement",
            "unit_of_measurement": "%",
            "suggested_display_precision": 1,
            "value_template": _number((), "anomaly_rate", 100, 2),
        },
        ("sensor", "attestation_score"): {
            **diag,
            "name": "Attestation score",
            "icon": "mdi:shield-check-outline",
            "state_class": "measurement",
            "suggested_display_precision": 2,
            "value_template": _number(("attestation",), "score"),
            "json_attributes_template": _attributes(
                ("attestation",),
                {"status": "status", "epoch_start": "epoch_start", "epoch_end": "epoch_end"},
            ),
        },
    }


def discovery(
    *,
    device_id: str,
    name: str,
    version: str,
    prefix: str,
    discovery_prefix: str = "homeassistant",
    sensors: Sequence[Sensor | tuple[str, Mapping[str, str]]],
    state_interval: float | None = None,
) -> dict[str, bytes]:
    """Topic -> retained JSON config of every entity of this gateway, sorted by topic.

    `prefix` is the gateway's topic prefix (uplink topic_prefix), `sensors` the configured
    sensors, each a `Sensor` or a (sensor id, quantity -> SenML unit) pair, e.g.
    `(cfg.id, driver.quantities)`. `state_interval` is `[monitor] state_interval`: with it, the
    measurements of sensors whose interval is given get `expire_after`; the drivers given name
    the device's model.
    """
    _check_prefix("prefix", prefix)
    _check_prefix("discovery_prefix", discovery_prefix)
    node = node_id(device_id)
    base = f"{prefix}/{device_id}"
    status, state, health = f"{base}/status", f"{base}/state", f"{base}/health"
    described = [s if isinstance(s, Sensor) else Sensor(s[0], s[1]) for s in sensors]
    device = {
        "identifiers": [device_id],
        "name": name,
        "manufacturer": MANUFACTURER,
        "model": model(s.driver for s in described),
        "sw_version": version,
    }
    common = {"device": device, "origin": {"name": MANUFACTURER, "sw_version": version}}
    availability = {
        "availability_topic": status,
        "payload_available": _AVAILABLE,
        "payload_not_available": _NOT_AVAILABLE,
    }

    entities: dict[tuple[str, str], dict[str, Any]] = {}
    seen: set[str] = set()
    for sensor_id, quantities, _, interval in described:
        if sensor_id in seen:
            raise ValueError(f"sensor id {sensor_id!r} appears twice")
        seen.add(sensor_id)
        expire = None
        if interval is not None and state_interval is not None:
            expire = expire_after(interval, state_interval)
        for quantity, unit in quantities.items():
            entity = _measured(sensor_id, quantity, unit, expire)
            entity["state_topic"] = state
            entity["json_attributes_topic"] = state
            entities["sensor", _object_id(sensor_id, quantity)] = {**entity, **availability}
    for key, entity in _gateway_entities().items():
        entity["state_topic"] = health
        if "json_attributes_template" in entity:
            entity["json_attributes_topic"] = health
        entities[key] = {**entity, **availability}
    # The connectivity sensor reads the status topic itself and so has no availability: offline
    # is its "off" state, not "unavailable".
    entities["binary_sensor", "online"] = {
        "name": "Online",
        "device_class": "connectivity",
        "entity_category": "diagnostic",
        "state_topic": status,
        "payload_on": _AVAILABLE,
        "payload_off": _NOT_AVAILABLE,
    }

    out: dict[str, bytes] = {}
    for (component, object_id), entity in entities.items():
        payload = {
            **entity,
            **common,
            "unique_id": f"depin-{device_id}-{object_id}",
            "default_entity_id": entity_id(component, device_id, object_id),
        }
        out[f"{discovery_prefix}/{component}/{node}/{object_id}/config"] = _encode(payload)
    return dict(sorted(out.items()))
