"""Home Assistant MQTT discovery payloads (gateway/monitor/homeassistant.py), checked against
the rules Home Assistant applies to them.

The rules below are transcribed from Home Assistant core; each names the file it comes from.
Templates are rendered by a small evaluator of the Jinja subset the module generates
(tests/ha_sensor.py; the venv has no jinja2, and none is added); when jinja2 is importable, a
second test renders every template with Jinja's sandbox too and requires the same output.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pytest
from paho.mqtt.client import topic_matches_sub

from drivers.bme280 import BME280
from drivers.pms5003 import PMS5003
from drivers.scd4x import SCD4x
from drivers.sds011 import SDS011
from drivers.sht4x import SHT4x
from drivers.simulated import QUANTITY_UNITS, SimulatedSensor
from gateway.monitor import homeassistant as ha
from tests.ha_sensor import PAYLOAD_NONE, Entity, attributes, render, state_reading

DEVICE = "z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
OTHER = "z6MkpTHR8VNsBxYAAWHut2Geadd9jSwuBV8xRoAnwWsdvktH"
PREFIX = "depin/v1"
DP = "homeassistant"
MICRO_SIGN = "\u00b5"
GREEK_MU = "\u03bc"
UG_M3 = f"{MICRO_SIGN}g/m\u00b3"

# --- Home Assistant's rules ----------------------------------------------------------------------


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# homeassistant/components/mqtt/discovery.py: TOPIC_MATCHER, applied to the topic after
# "<discovery_prefix>/".
TOPIC_MATCHER = re.compile(
    r"(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?(?P<object_id>[a-zA-Z0-9_-]+)/config"
)

# homeassistant/components/sensor/const.py: SensorDeviceClass (all values).
SENSOR_DEVICE_CLASSES = _words(
    "date enum timestamp apparent_power aqi area atmospheric_pressure battery "
    "blood_glucose_concentration carbon_monoxide carbon_dioxide conductivity current "
    "data_rate data_size distance duration energy energy_distance energy_storage frequency "
    "gas humidity illuminance irradiance moisture monetary nitrogen_dioxide nitrogen_monoxide "
    "nitrous_oxide ozone ph pm1 pm10 pm25 power_factor power precipitation "
    "precipitation_intensity pressure reactive_power signal_strength sound_pressure speed "
    "sulphur_dioxide temperature temperature_delta volatile_organic_compounds "
    "volatile_organic_compounds_parts voltage volume volume_storage volume_flow_rate water "
    "weight wind_direction wind_speed"
)

# homeassistant/components/sensor/const.py: DEVICE_CLASS_UNITS, for the classes used here.
# The µ in CONCENTRATION_MICROGRAMS_PER_CUBIC_METER is the MICRO SIGN U+00B5 up to 2025.8; from
# then on the constant is U+03BC and the MQTT sensor maps U+00B5 onto it (AMBIGUOUS_UNITS, in
# validate_sensor_state_and_device_class_config), so U+00B5 is the spelling every release accepts.
DEVICE_CLASS_UNITS: Mapping[str, frozenset[str]] = {
    "temperature": frozenset({"\u00b0C", "\u00b0F", "K"}),
    "humidity": frozenset({"%"}),
    "atmospheric_pressure": frozenset(
        {"Pa", "hPa", "kPa", "bar", "cbar", "mbar", "mmHg", "inHg", "psi"}
    ),
    "pm1": frozenset({UG_M3}),
    "pm25": frozenset({UG_M3}),
    "pm10": frozenset({UG_M3}),
    "carbon_dioxide": frozenset({"ppm"}),
    "duration": frozenset({"d", "h", "min", "s", "ms"}),
}

# homeassistant/components/sensor/const.py: DEVICE_CLASS_STATE_CLASSES, same classes.
ALL_STATE_CLASSES = frozenset({"measurement", "total", "total_increasing"})
DEVICE_CLASS_STATE_CLASSES: Mapping[str, frozenset[str]] = {
    **{c: frozenset({"measurement"}) for c in DEVICE_CLASS_UNITS if c != "duration"},
    "duration": ALL_STATE_CLASSES,
}

# homeassistant/components/binary_sensor/__init__.py: BinarySensorDeviceClass.
BINARY_SENSOR_DEVICE_CLASSES = _words(
    "battery battery_charging carbon_monoxide cold connectivity door garage_door gas heat "
    "light lock moisture motion moving occupancy opening plug power presence problem running "
    "safety smoke sound tamper update vibration window"
)

# homeassistant/components/sensor/__init__.py and binary_sensor/__init__.py
# (async_internal_added_to_hass): "cannot be added as the entity category is set to config".
READ_ONLY_ENTITY_CATEGORIES = frozenset({"diagnostic"})

# homeassistant/core.py: VALID_ENTITY_ID (the older, stricter form: no "__" anywhere). The MQTT
# schema validates default_entity_id with cv.entity_id; a bad one fails the whole payload.
VALID_ENTITY_ID = re.compile(r"^(?!.+__)(?!_)[\da-z_]+(?<!_)\.(?!_)[\da-z_]+(?<!_)$")

# homeassistant/components/mqtt/abbreviations.py (full names) and the sensor / binary_sensor
# schemas: the keys this module may use. Discovery drops unknown keys silently
# (DISCOVERY_SCHEMA uses extra=vol.REMOVE_EXTRA), so a typo would go unnoticed in HA itself.
KNOWN_KEYS: Mapping[str, frozenset[str]] = {
    "common": frozenset(
        {
            "availability_topic",
            "default_entity_id",
            "device",
            "device_class",
            "entity_category",
            "icon",
            "json_attributes_template",
            "json_attributes_topic",
            "name",
            "origin",
            "payload_available",
            "payload_not_available",
            "state_topic",
            "unique_id",
            "value_template",
        }
    ),
    "sensor": frozenset(
        {"expire_after", "state_class", "suggested_display_precision", "unit_of_measurement"}
    ),
    "binary_sensor": frozenset({"payload_on", "payload_off"}),
}
DEVICE_KEYS = frozenset({"identifiers", "name", "manufacturer", "model", "sw_version"})


def check_config(topic: str, payload: bytes) -> dict[str, Any]:
    """Everything Home Assistant checks of one discovery message; returns the parsed config."""
    assert topic.startswith(f"{DP}/")
    m = TOPIC_MATCHER.fullmatch(topic[len(DP) + 1 :])
    assert m is not None, topic
    component, node = m["component"], m["node_id"]
    assert component in ("sensor", "binary_sensor")
    assert node == ha.node_id(DEVICE)

    text = payload.decode("utf-8")  # strict: must be valid UTF-8
    cfg = json.loads(text)
    assert isinstance(cfg, dict)
    assert set(cfg) <= KNOWN_KEYS["common"] | KNOWN_KEYS[component], set(cfg)

    assert isinstance(cfg["unique_id"], str) and cfg["unique_id"]
    assert isinstance(cfg["name"], str) and cfg["name"]
    eid = cfg["default_entity_id"]
    assert VALID_ENTITY_ID.match(eid), eid
    assert eid.split(".")[0] == component

    dev = cfg["device"]
    assert set(dev) <= DEVICE_KEYS
    assert dev.get("identifiers") == [DEVICE]  # at least one identifier (mqtt/schemas.py)
    assert all(isinstance(v, str) for k, v in dev.items() if k != "identifiers")
    assert cfg["origin"]["name"]  # MQTT_ORIGIN_INFO_SCHEMA: name required

    if "entity_category" in cfg:
        assert cfg["entity_category"] in READ_ONLY_ENTITY_CATEGORIES
    if "availability_topic" in cfg:
        assert "+" not in cfg["availability_topic"] and "#" not in cfg["availability_topic"]
        assert cfg["payload_available"] == "online"
        assert cfg["payload_not_available"] == "offline"
    for key in ("state_topic", "availability_topic", "json_attributes_topic"):
        if key in cfg:
            assert cfg[key].startswith(f"{PREFIX}/{DEVICE}/")
    if "json_attributes_template" in cfg:
        assert "json_attributes_topic" in cfg

    if component == "binary_sensor":
        assert cfg["device_class"] in BINARY_SENSOR_DEVICE_CLASSES
        return cfg

    # mqtt/sensor.py: CONF_EXPIRE_AFTER is cv.positive_int (0 switches it off)
    expire = cfg.get("expire_after")
    assert expire is None or (type(expire) is int and expire > 0), expire
    unit = cfg.get("unit_of_measurement")
    assert unit is None or unit.strip()  # a blank unit is dropped (mqtt/sensor.py)
    state_class = cfg.get("state_class")
    assert state_class is None or state_class in ALL_STATE_CLASSES
    device_class = cfg.get("device_class")
    if device_class is not None:
        assert device_class in SENSOR_DEVICE_CLASSES
        assert device_class in DEVICE_CLASS_UNITS, f"no rule transcribed for {device_class}"
        assert unit in DEVICE_CLASS_UNITS[device_class], (device_class, unit)
        assert state_class in DEVICE_CLASS_STATE_CLASSES[device_class]
    assert GREEK_MU not in text  # one spelling of micro, the one every release accepts
    assert "value_template" in cfg
    return cfg


# --- fixtures -----------------------------------------------------------------------------------

DRIVERS: Mapping[str, Callable[[], Mapping[str, str]]] = {
    "bme280": lambda: BME280(sensor_id="climate", options={"bus": "emulated"}).quantities,
    "sht4x": lambda: SHT4x(sensor_id="rh", options={"bus": "emulated"}).quantities,
    "scd4x": lambda: SCD4x(sensor_id="co2", options={"bus": "emulated"}).quantities,
    "sds011": lambda: SDS011(sensor_id="pm", options={}).quantities,
    "pms5003": lambda: PMS5003(sensor_id="pm", options={}).quantities,
    "simulated": lambda: SimulatedSensor(sensor_id="sim", options={"kind": "all"}).quantities,
}

#: quantity -> (device class, unit, SenML value in the state, value Home Assistant shows)
EXPECTED: Mapping[str, tuple[str, str, float, float]] = {
    "temperature": ("temperature", "\u00b0C", 21.3, 21.3),
    "humidity": ("humidity", "%", 45.5, 45.5),
    "pressure": ("atmospheric_pressure", "hPa", 101325.37, 1013.25),
    "pm1": ("pm1", UG_M3, 3.0, 3.0),
    "pm2_5": ("pm25", UG_M3, 12.4, 12.4),
    "pm10": ("pm10", UG_M3, 20.1, 20.1),
    "co2": ("carbon_dioxide", "ppm", 415, 415),
}


def announce(
    sensors: Sequence[ha.Sensor | tuple[str, Mapping[str, str]]], **kw: Any
) -> dict[str, bytes]:
    args: dict[str, Any] = {
        "device_id": DEVICE,
        "name": "Balcony gateway",
        "version": "0.1.0",
        "prefix": PREFIX,
        "sensors": sensors,
    }
    args.update(kw)
    return ha.discovery(**args)


def config_of(msgs: Mapping[str, bytes], component: str, object_id: str) -> dict[str, Any]:
    return check_config(
        topic := f"{DP}/{component}/{ha.node_id(DEVICE)}/{object_id}/config", msgs[topic]
    )


def reading(v: float | None) -> dict[str, Any]:
    return {"v": v, "u": "x", "t": 1767225600.0, "as": 0.12, "af": ["spike"]}


def state_doc(sensors: Mapping[str, Mapping[str, float | None]]) -> dict[str, Any]:
    return {
        "device": DEVICE,
        "name": "Balcony gateway",
        "updated": 1767225600.0,
        "sensors": {s: {q: reading(v) for q, v in qs.items()} for s, qs in sensors.items()},
    }


HEALTH = {
    "queue_depth": 17,
    "oldest_unsent_age_s": 42.5,
    "anomaly_rate": 0.0375,
    "attestation": {"score": 0.93, "status": "ok", "epoch_start": 1, "epoch_end": 2},
    "uptime_s": 3600.0,
    "readings": 1000,
    "connected": True,
}


# --- the tests ----------------------------------------------------------------------------------


@pytest.mark.parametrize("driver", sorted(DRIVERS))
def test_driver_entities_carry_what_home_assistant_expects(driver: str) -> None:
    quantities = dict(DRIVERS[driver]())
    sid = {"sds011": "pm", "pms5003": "pm"}.get(driver, driver)
    msgs = announce([(sid, quantities)])
    values = {q: EXPECTED[q][2] if q in EXPECTED else 7.0 for q in quantities}
    doc = state_doc({sid: values})
    for quantity, senml in quantities.items():
        cfg = config_of(msgs, "sensor", f"{sid}-{quantity}")
        assert cfg["state_class"] == "measurement"
        assert cfg["state_topic"] == f"{PREFIX}/{DEVICE}/state"
        assert cfg["availability_topic"] == f"{PREFIX}/{DEVICE}/status"
        assert cfg["unique_id"] == f"depin-{DEVICE}-{sid}-{quantity}"
        assert cfg["default_entity_id"] == f"sensor.depin_egta2dok_{sid}_{quantity}"
        if quantity in EXPECTED:
            device_class, unit, _, shown = EXPECTED[quantity]
            assert cfg["device_class"] == device_class
            assert cfg["unit_of_measurement"] == unit
            assert state_reading(cfg, doc) == pytest.approx(shown)
        else:  # e.g. the PMS5003's particle counts and CF=1 concentrations
            assert "device_class" not in cfg
            assert cfg["unit_of_measurement"] == (UG_M3 if senml == "ug/m3" else senml)
            assert state_reading(cfg, doc) == 7.0
        assert attributes(cfg, doc) == {
            "anomaly_score": 0.12,
            "anomaly_flags": ["spike"],
            "measured_at": 1767225600.0,
        }


def test_a_failed_read_or_a_missing_sensor_shows_unknown() -> None:
    msgs = announce([("env", QUANTITY_UNITS)])
    docs = [
        state_doc({"env": dict.fromkeys(QUANTITY_UNITS)}),  # every read failed: v null
        state_doc({"env": {}}),  # no reading yet
        state_doc({}),  # sensor absent
        {"device": DEVICE, "name": "x", "updated": 0},  # no sensors at all
    ]
    nulled = state_doc({"env": dict.fromkeys(QUANTITY_UNITS)})
    nulled["sensors"]["env"]["temperature"] = None  # a null reading object
    docs.append(nulled)
    for quantity in QUANTITY_UNITS:
        cfg = config_of(msgs, "sensor", f"env-{quantity}")
        for doc in docs:
            assert render(cfg["value_template"], doc) == PAYLOAD_NONE
            assert set(attributes(cfg, doc)) == {"anomaly_score", "anomaly_flags", "measured_at"}


def test_gateway_entities_read_health_and_status() -> None:
    msgs = announce([])
    health = f"{PREFIX}/{DEVICE}/health"
    queue = config_of(msgs, "sensor", "queue_depth")
    age = config_of(msgs, "sensor", "oldest_unsent_age")
    rate = config_of(msgs, "sensor", "anomaly_rate")
    score = config_of(msgs, "sensor", "attestation_score")
    online = config_of(msgs, "binary_sensor", "online")
    assert {c["state_topic"] for c in (queue, age, rate, score)} == {health}
    assert (queue["unit_of_measurement"], queue["state_class"]) == ("readings", "measurement")
    assert (age["device_class"], age["unit_of_measurement"]) == ("duration", "s")
    assert rate["unit_of_measurement"] == "%"
    assert all(c["entity_category"] == "diagnostic" for c in (queue, age, rate, score, online))

    assert state_reading(queue, HEALTH) == 17
    assert state_reading(age, HEALTH) == 42.5
    assert state_reading(rate, HEALTH) == 3.75  # a fraction in health, a percentage in HA
    assert state_reading(score, HEALTH) == 0.93
    assert attributes(score, HEALTH) == {"status": "ok", "epoch_start": 1, "epoch_end": 2}
    idle = {**HEALTH, "oldest_unsent_age_s": None, "attestation": None}
    assert state_reading(age, idle) is None
    assert state_reading(score, idle) is None
    assert attributes(score, idle) == {"status": None, "epoch_start": None, "epoch_end": None}
    assert state_reading(queue, {}) is None

    assert online["device_class"] == "connectivity"
    assert online["state_topic"] == f"{PREFIX}/{DEVICE}/status"
    assert (online["payload_on"], online["payload_off"]) == ("online", "offline")
    assert "availability_topic" not in online  # offline is its off state, not unavailable
    assert "value_template" not in online


def test_every_message_passes_and_ids_are_unique() -> None:
    drivers = {name: dict(make()) for name, make in DRIVERS.items()}
    msgs = announce([(name, q) for name, q in drivers.items()])
    configs = [check_config(t, p) for t, p in msgs.items()]
    assert len(configs) == sum(len(q) for q in drivers.values()) + 5
    for key in ("unique_id", "default_entity_id"):
        assert len({c[key] for c in configs}) == len(configs), key
    assert list(msgs) == sorted(msgs)


def test_ids_are_stable_across_calls_and_sensor_order() -> None:
    sensors = [(name, dict(make())) for name, make in DRIVERS.items()]
    first = announce(sensors)
    assert announce(sensors) == first
    assert announce(list(reversed(sensors))) == first
    # Name and version change the payloads, never the topics or the ids.
    renamed = announce(sensors, name="Kitchen", version="0.2.0")
    assert list(renamed) == list(first)
    for topic in first:
        old, new = json.loads(first[topic]), json.loads(renamed[topic])
        assert old["unique_id"] == new["unique_id"]
        assert old["default_entity_id"] == new["default_entity_id"]
        assert new["device"]["name"] == "Kitchen" and new["device"]["sw_version"] == "0.2.0"


def test_a_dropped_sensor_is_removed_and_nothing_else() -> None:
    before = announce([("climate", DRIVERS["bme280"]()), ("pm", DRIVERS["pms5003"]())])
    after = announce([("climate", DRIVERS["bme280"]())])
    others = announce([("pm", DRIVERS["pms5003"]())], device_id=OTHER)
    foreign = [
        f"{DP}/sensor/someone_else/pm-pm2_5/config",
        f"{DP}/sensor/{ha.node_id(DEVICE)}/pm-pm2_5/state",
        f"{DP}/sensor/{ha.node_id(DEVICE)}/pm-pm2_5/extra/config",
        f"other/sensor/{ha.node_id(DEVICE)}/pm-pm2_5/config",
        f"{DP}x/sensor/{ha.node_id(DEVICE)}/pm-pm2_5/config",
        f"{PREFIX}/{DEVICE}/state",
    ]
    retained = [*before, *others, *foreign, *before]  # duplicates as a broker may deliver them
    gone = ha.stale(retained, after, device_id=DEVICE, discovery_prefix=DP)
    expected = sorted(set(before) - set(after))
    assert gone == expected
    assert len(gone) == len(DRIVERS["pms5003"]())
    assert all("/pm-" in t for t in gone)
    assert not set(gone) & set(others)
    assert ha.stale(retained, before, device_id=DEVICE, discovery_prefix=DP) == []
    # The other device sees only its own.
    assert ha.stale(retained, {}, device_id=OTHER, discovery_prefix=DP) == sorted(others)


def test_subscriptions_see_this_devices_config_topics_only() -> None:
    mine = announce([("env", QUANTITY_UNITS)])
    theirs = announce([("env", QUANTITY_UNITS)], device_id=OTHER)
    filters = ha.subscriptions(DP, DEVICE)
    assert filters and all("#" not in f for f in filters)
    assert all(any(topic_matches_sub(f, t) for f in filters) for t in mine)
    assert not any(topic_matches_sub(f, t) for f in filters for t in theirs)
    assert ha.birth_topic(DP) == "homeassistant/status"
    assert ha.birth_topic("ha/discovery") == "ha/discovery/status"


def test_custom_discovery_prefix() -> None:
    msgs = announce([("env", QUANTITY_UNITS)], discovery_prefix="ha/disc")
    node = ha.node_id(DEVICE)
    assert all(t.startswith("ha/disc/") and t.endswith("/config") for t in msgs)
    assert f"ha/disc/sensor/{node}/env-temperature/config" in msgs
    assert ha.stale(list(msgs), {}, device_id=DEVICE, discovery_prefix="ha/disc") == list(msgs)
    assert ha.stale(list(msgs), {}, device_id=DEVICE, discovery_prefix=DP) == []
    assert ha.subscriptions("ha/disc", DEVICE) == [f"ha/disc/+/{node}/+/config"]


def test_json_is_utf8_with_the_micro_sign() -> None:
    msgs = announce([("pm", DRIVERS["pms5003"]())])
    payload = msgs[f"{DP}/sensor/{ha.node_id(DEVICE)}/pm-pm2_5/config"]
    payload.decode("utf-8")
    assert b"\xc2\xb5g/m\xc2\xb3" in payload  # U+00B5 MICRO SIGN, U+00B3 SUPERSCRIPT THREE
    assert b"\xce\xbc" not in payload  # not U+03BC GREEK SMALL LETTER MU
    assert b"\\u00b5" not in payload  # literal UTF-8, not an escape
    assert json.loads(payload)["unit_of_measurement"] == "\u00b5g/m\u00b3"
    assert ha.MICROGRAMS_PER_CUBIC_METER == "\u00b5g/m\u00b3"
    for p in msgs.values():
        p.decode("utf-8")


def test_odd_names_still_give_valid_distinct_topics() -> None:
    sensors: list[tuple[str, Mapping[str, str]]] = [
        ("a-b", {"c": "Cel"}),
        ("a", {"b-c": "Cel"}),
        ("x", {"it's \\ {{odd}}": "%RH", "caf\u00e9": "Cel", "temperature": "degF"}),
    ]
    msgs = announce(sensors)
    configs = {t: check_config(t, p) for t, p in msgs.items()}
    assert len(msgs) == 5 + 5
    doc = state_doc(
        {"a-b": {"c": 1.0}, "a": {"b-c": 2.0}, "x": {"it's \\ {{odd}}": 3.0, "caf\u00e9": 4.0}}
    )
    doc["sensors"]["x"]["temperature"] = reading(70.0)
    measured = [c for c in configs.values() if c.get("state_topic", "").endswith("/state")]
    got = {(c["name"], state_reading(c, doc)) for c in measured}
    assert got == {
        ("c (a-b)", 1.0),
        ("b-c (a)", 2.0),
        ("it's \\ {{odd}} (x)", 3.0),
        ("caf\u00e9 (x)", 4.0),
        ("temperature (x)", 70.0),  # a known name in an unknown unit: no device class
    }
    by_name = {c["name"]: c for c in configs.values()}
    assert "device_class" not in by_name["temperature (x)"]
    assert by_name["temperature (x)"]["unit_of_measurement"] == "degF"
    assert by_name["it's \\ {{odd}} (x)"]["unit_of_measurement"] == "%"


def test_node_id_of_a_device_id_outside_the_topic_alphabet() -> None:
    odd = "did:key:z6Mk/weird+id"
    node = ha.node_id(odd)
    assert re.fullmatch(r"[a-zA-Z0-9_-]+", node)
    assert node != ha.node_id("did:key:z6Mk/weird#id")
    assert ha.node_id(DEVICE) == DEVICE
    msgs = ha.discovery(
        device_id=odd, name="n", version="v", prefix=PREFIX, sensors=[("env", {"co2": "ppm"})]
    )
    assert all(TOPIC_MATCHER.fullmatch(t[len(DP) + 1 :]) for t in msgs)
    for p in msgs.values():
        assert VALID_ENTITY_ID.match(json.loads(p)["default_entity_id"])
    assert ha.stale(list(msgs), {}, device_id=odd, discovery_prefix=DP) == sorted(msgs)


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        announce([("env", {"co2": "ppm"}), ("env", {"co2": "ppm"})])
    for bad in ("", "/ha", "ha/", "ha/+", "ha/#", "a//b"):
        with pytest.raises(ValueError):
            announce([], discovery_prefix=bad)
        with pytest.raises(ValueError):
            ha.subscriptions(bad, DEVICE)
    with pytest.raises(ValueError):
        announce([], prefix="depin/+")
    with pytest.raises(ValueError):
        ha.node_id("")


def test_the_validator_has_teeth() -> None:
    """The rules above reject what Home Assistant rejects."""
    msgs = announce([("pm", {"pm2_5": "ug/m3"})])
    topic = f"{DP}/sensor/{ha.node_id(DEVICE)}/pm-pm2_5/config"
    good = json.loads(msgs[topic])

    def variant(**changes: Any) -> bytes:
        return json.dumps({**good, **changes}, ensure_ascii=False).encode()

    check_config(topic, variant())
    for bad in (
        variant(unit_of_measurement="ug/m3"),
        variant(unit_of_measurement=f"{GREEK_MU}g/m\u00b3"),
        variant(state_class="total_increasing"),
        variant(device_class="pm2_5"),
        variant(entity_category="config"),
        variant(default_entity_id="sensor.Depin__x"),
        variant(default_entity_id="binary_sensor.depin_x"),
        variant(unit_of_measurment="x"),
        variant(device={"name": "n"}),
    ):
        with pytest.raises(AssertionError):
            check_config(topic, bad)
    with pytest.raises(AssertionError):
        check_config(f"{DP}/sensor/{ha.node_id(DEVICE)}/pm.pm2_5/config", variant())
    with pytest.raises(AssertionError):
        state_reading({"value_template": "{{ 'abc' }}"}, {})
    with pytest.raises(AssertionError):
        attributes({"json_attributes_template": "{{ {'state': 1} | tojson }}"}, {})


def test_templates_render_the_same_in_jinja() -> None:
    jinja2 = pytest.importorskip("jinja2")
    sandbox = pytest.importorskip("jinja2.sandbox")
    # Home Assistant renders in a subclass of this sandbox; strict undefined makes any lookup
    # of a missing name fail instead of rendering empty.
    env = sandbox.ImmutableSandboxedEnvironment(undefined=jinja2.StrictUndefined)
    sensors = [(name, dict(make())) for name, make in DRIVERS.items()]
    sensors.append(("x", {"it's \\ {{odd}}": "%RH"}))
    msgs = announce(sensors)
    full = {s: {q: EXPECTED[q][2] if q in EXPECTED else 7.0 for q in qs} for s, qs in sensors}
    docs: list[Any] = [
        state_doc(full),
        state_doc({s: dict.fromkeys(qs) for s, qs in sensors}),
        state_doc({}),
        HEALTH,
        {**HEALTH, "oldest_unsent_age_s": None, "attestation": None},
        {},
    ]
    checked = 0
    for payload in msgs.values():
        cfg = json.loads(payload)
        for key in ("value_template", "json_attributes_template"):
            if key in cfg:
                template = env.from_string(cfg[key])
                for doc in docs:
                    assert template.render(value_json=doc) == render(cfg[key], doc), cfg[key]
                    checked += 1
    assert checked > 100


def test_the_model_says_what_the_device_is() -> None:
    sensors = [
        ha.Sensor("climate", DRIVERS["bme280"](), "bme280", 30.0),
        ha.Sensor("pm", DRIVERS["sds011"](), "sds011", 60.0),
        ha.Sensor("co2", DRIVERS["scd4x"](), "scd4x", 5.0),
        ha.Sensor("outdoor", DRIVERS["bme280"](), "bme280", 30.0),
    ]
    msgs = announce(sensors, state_interval=10.0)
    devices = {json.dumps(json.loads(p)["device"], sort_keys=True) for p in msgs.values()}
    assert len(devices) == 1  # every entity describes the one device alike
    device = json.loads(devices.pop())
    assert device["model"] == "Sensor gateway (BME280, SCD4x, SDS011)"
    assert device["manufacturer"] == "depin-gateway"
    assert announce(list(reversed(sensors)), state_interval=10.0) == msgs
    # a caller that names no drivers still gets a model that says what the device is
    plain = json.loads(next(iter(announce([("env", QUANTITY_UNITS)]).values())))
    assert plain["device"]["model"] == "Sensor gateway"
    assert (
        ha.model(["simulated", "pms5003", "sht4x"]) == "Sensor gateway (PMS5003, SHT4x, simulated)"
    )


def test_a_silent_gateways_measurements_expire() -> None:
    """A gateway that hangs with its connection open sends no Last Will: its values must not
    stand for good. `expire_after` is three times the longer of the sensor's interval and the
    state interval, so a live gateway never lets it run out."""
    climate, pm = DRIVERS["bme280"](), DRIVERS["sds011"]()
    sensors = [ha.Sensor("climate", climate, "bme280", 30.0), ha.Sensor("pm", pm, "sds011", 2.5)]
    msgs = announce(sensors, state_interval=10.0)
    assert {config_of(msgs, "sensor", f"climate-{q}")["expire_after"] for q in climate} == {90}
    assert {config_of(msgs, "sensor", f"pm-{q}")["expire_after"] for q in pm} == {30}
    for object_id in ("queue_depth", "oldest_unsent_age", "anomaly_rate", "attestation_score"):
        assert "expire_after" not in config_of(msgs, "sensor", object_id)  # health: the Will
    assert "expire_after" not in config_of(msgs, "binary_sensor", "online")
    # Without the intervals (an older caller) nothing expires, as before.
    assert "expire_after" not in config_of(
        announce([("climate", climate)]), "sensor", "climate-temperature"
    )
    assert "expire_after" not in config_of(
        announce([ha.Sensor("climate", climate, "bme280", 30.0)]), "sensor", "climate-temperature"
    )
    assert ha.expire_after(0.05, 1.0) == 3 and ha.expire_after(7.3, 1.0) == 22

    status, state = f"{PREFIX}/{DEVICE}/status", f"{PREFIX}/{DEVICE}/state"
    temperature = Entity(config_of(msgs, "sensor", "climate-temperature"))
    pm25 = Entity(config_of(msgs, "sensor", "pm-pm2_5"))
    online = config_of(msgs, "binary_sensor", "online")
    entities = (temperature, pm25)
    doc = json.dumps(state_doc({"climate": {"temperature": 21.3}, "pm": {"pm2_5": 12.4}}))
    for e in entities:
        e.receive(0, status, b"online")
    # The gateway lives: a state every 10 s, for ten minutes; then it hangs (no Will).
    for t in range(0, 600, 10):
        for e in entities:
            e.receive(t, state, doc.encode())
        assert (temperature.shown(t + 9.9), pm25.shown(t + 9.9)) == (21.3, 12.4)
    last = 590
    assert temperature.shown(last + 89) == 21.3 and pm25.shown(last + 29) == 12.4
    assert pm25.shown(last + 30) == "unavailable" and temperature.shown(last + 89) == 21.3
    assert temperature.shown(last + 90) == "unavailable"
    assert online["state_topic"] == status  # still "on": the broker did not notice
    # It comes back: the next state makes the values available again.
    for e in entities:
        e.receive(last + 300, state, doc.encode())
    assert (temperature.shown(last + 301), pm25.shown(last + 301)) == (21.3, 12.4)
    # The Last Will makes everything unavailable at once.
    for e in entities:
        e.receive(last + 302, status, b"offline")
    assert (temperature.shown(last + 303), pm25.shown(last + 303)) == ("unavailable",) * 2
