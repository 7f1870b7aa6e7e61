"""Home Assistant's MQTT sensor as the tests model it, transcribed from Home Assistant core
(each rule names the file it comes from): a small evaluator of the Jinja subset that the
gateway's discovery templates (gateway/monitor/homeassistant.py) use, so that no test needs
jinja2; the state and attributes a sensor takes from a message; and how one entity's state
shows over time."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from typing import Any

# homeassistant/components/mqtt/entity.py MQTT_ATTRIBUTES_BLOCKED, plus the sensor's own
# (mqtt/sensor.py MQTT_SENSOR_ATTRIBUTES_BLOCKED): attributes with these names are dropped.
ATTRIBUTES_BLOCKED = frozenset(
    {
        "assumed_state",
        "available",
        "device_class",
        "device_info",
        "entity_category",
        "entity_picture",
        "entity_registry_enabled_default",
        "extra_state_attributes",
        "force_update",
        "icon",
        "friendly_name",
        "should_poll",
        "state",
        "supported_features",
        "unique_id",
        "unit_of_measurement",
        "last_reset",
        "state_class",
    }
)

# homeassistant/components/mqtt/sensor.py _update_state: a rendered "None" (PAYLOAD_NONE) sets
# the state to unknown; any other text of a numeric sensor must be a number
# (sensor/__init__.py raises on a non-numeric state).
PAYLOAD_NONE = "None"


# --- a tiny evaluator for the Jinja subset the discovery templates use -------------------------

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<num>\d+(?:\.\d+)?)|(?P<name>[A-Za-z_]\w*)"
    r"|(?P<op>[(){}\[\].,:|*=]))"
)


Thunk = Callable[[], Any]


class _Parser:
    """Expressions: names, string and number literals, dict literals, `.get(...)` calls,
    `*`, `or`, `x is number`, `a if b else c`, and the filters round(n) and tojson. Parsing
    builds closures, so a branch of `a if b else c` is evaluated only when taken, as in Jinja."""

    def __init__(self, text: str, env: dict[str, Any]) -> None:
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text.rstrip()):
            m = _TOKEN.match(text, pos)
            assert m is not None and m.lastgroup is not None, f"cannot lex {text[pos:]!r}"
            self.tokens.append((m.lastgroup, m.group(m.lastgroup)))
            pos = m.end()
        self.i = 0
        self.env = env

    def peek(self) -> str | None:
        return self.tokens[self.i][1] if self.i < len(self.tokens) else None

    def take(self, want: str | None = None) -> tuple[str, str]:
        tok = self.tokens[self.i]
        assert want is None or tok[1] == want, f"expected {want!r}, got {tok[1]!r}"
        self.i += 1
        return tok

    def parse(self) -> Thunk:
        thunk = self.expr()
        assert self.i == len(self.tokens), f"trailing tokens {self.tokens[self.i :]}"
        return thunk

    def expr(self) -> Thunk:
        value = self.or_()
        if self.peek() != "if":
            return value
        self.take()
        cond = self.or_()
        self.take("else")
        other = self.expr()
        return lambda: value() if cond() else other()

    def or_(self) -> Thunk:
        value = self.mul()
        while self.peek() == "or":
            self.take()
            value = (lambda a, b: lambda: a() or b())(value, self.mul())
        return value

    def mul(self) -> Thunk:
        value = self.test()
        while self.peek() == "*":
            self.take()
            value = (lambda a, b: lambda: a() * b())(value, self.test())
        return value

    def test(self) -> Thunk:
        value = self.filtered()
        if self.peek() != "is":
            return value
        self.take()
        assert self.take()[1] == "number"
        return lambda: isinstance(value(), int | float)

    def filtered(self) -> Thunk:
        value = self.postfix()
        while self.peek() == "|":
            self.take()
            _, name = self.take()
            if name == "round":
                self.take("(")
                digits = int(self.take()[1])
                self.take(")")
                value = (lambda a, n: lambda: round(a(), n))(value, digits)
            else:
                assert name == "tojson", name
                value = (lambda a: lambda: json.dumps(a(), sort_keys=True))(value)
        return value

    def postfix(self) -> Thunk:
        value = self.primary()
        while self.peek() == ".":
            self.take()
            assert self.take()[1] == "get"
            self.take("(")
            key = self.expr()
            self.take(")")
            value = (lambda a, k: lambda: _get(a(), k()))(value, key)
        return value

    def primary(self) -> Thunk:
        kind, tok = self.take()
        if kind == "str":
            text = tok[1:-1].encode("ascii", "backslashreplace").decode("unicode_escape")
            return lambda: text
        if kind == "num":
            number = float(tok) if "." in tok else int(tok)
            return lambda: number
        if kind == "name":
            return (lambda: None) if tok == "None" else (lambda: self.env[tok])
        if tok == "(":
            value = self.expr()
            self.take(")")
            return value
        assert tok == "{", tok
        pairs: list[tuple[Thunk, Thunk]] = []
        while self.peek() != "}":
            key = self.expr()
            self.take(":")
            pairs.append((key, self.expr()))
            if self.peek() == ",":
                self.take()
        self.take("}")
        return lambda: {k(): v() for k, v in pairs}


def _get(obj: Any, key: Any) -> Any:
    assert isinstance(obj, dict), f".get() on {obj!r}"  # Jinja would raise here
    return obj.get(key)


def _render_value(value: Any) -> str:
    return "None" if value is None else str(value)


def render(template: str, value_json: Any) -> str:
    """Render a generated template the way Jinja does (str() of each expression)."""
    env: dict[str, Any] = {"value_json": value_json}
    out = []
    for m in re.finditer(r"\{%\s*set\s+(\w+)\s*=(.*?)%\}|\{\{(.*?)\}\}(?!\})", template, re.S):
        if m[1]:
            env[m[1]] = _Parser(m[2], env).parse()()
        else:
            out.append(_render_value(_Parser(m[3], env).parse()()))
    rebuilt = re.sub(r"\{%.*?%\}|\{\{.*?\}\}(?!\})", "", template, flags=re.S)
    assert rebuilt == "", f"text outside tags: {rebuilt!r}"
    return "".join(out)


def state_reading(cfg: Mapping[str, Any], value_json: Any) -> float | None:
    """The state Home Assistant's MQTT sensor gets from this config and payload."""
    text = render(cfg["value_template"], value_json)
    if text == PAYLOAD_NONE:
        return None
    # A numeric sensor takes nothing else.
    assert re.fullmatch(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?", text), text
    value = float(text)
    assert math.isfinite(value)
    return value


def attributes(cfg: Mapping[str, Any], value_json: Any) -> dict[str, Any]:
    attrs = json.loads(render(cfg["json_attributes_template"], value_json))
    assert isinstance(attrs, dict)  # mqtt/entity.py: "JSON result was not a dictionary"
    assert not set(attrs) & ATTRIBUTES_BLOCKED
    return attrs


class Entity:
    """How Home Assistant's MQTT sensor shows one measurement entity over time
    (mqtt/sensor.py `_update_state` and `available`, mqtt/entity.py MqttAvailabilityMixin):
    with an availability topic it is unavailable until `payload_available` arrives and again
    after `payload_not_available`; every message on the state topic restarts the
    `expire_after` timer (whatever it holds), and once the timer runs out the entity is
    unavailable (also before its first state) until the next message."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = cfg
        self.online = "availability_topic" not in cfg
        self.last_state: float | None = None
        self.value: float | None = None

    def receive(self, t: float, topic: str, payload: bytes) -> None:
        if topic == self.cfg.get("availability_topic"):
            text = payload.decode()
            if text in (self.cfg["payload_available"], self.cfg["payload_not_available"]):
                self.online = text == self.cfg["payload_available"]
        if topic == self.cfg["state_topic"]:
            self.last_state = t
            self.value = state_reading(self.cfg, json.loads(payload))

    def shown(self, t: float) -> float | str | None:
        """The state at time t: the value, None (unknown) or "unavailable"."""
        if not self.online:
            return "unavailable"
        expire = self.cfg.get("expire_after")
        if expire and (self.last_state is None or t >= self.last_state + expire):
            return "unavailable"
        return self.value
