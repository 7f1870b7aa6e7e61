"""The dashboard's checks of unsigned JSON (gateway/dashboard/fields.py and the model's state
and health handlers): arbitrary JSON in, well-typed fields out, never an exception; and what
the page gets is plain JSON a browser parses (no NaN, no integer beyond 2**53, no time out of
a calendar's range)."""

from __future__ import annotations

import json
import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.dashboard import fields
from gateway.dashboard.model import Fleet, dumps
from gateway.wire import cose
from tests import make_batches as mb

P = "depin/v1"
DEV = mb.identity(mb.SEED_A)
NOW = float(mb.SEALED)
BIRTH = mb.sign(DEV, mb.birth_payload(DEV), cose.TYP_BIRTH)

# JSON as anyone may send it, including the numbers a parser accepts that JavaScript cannot hold
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.sampled_from([1e300, -1e300, 2**53 + 1, 4_102_444_801, -1])
    | st.text(max_size=300)
)
json_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=12), inner, max_size=6)
    ),
    max_leaves=40,
)
# health fields by their own names, so every checker sees odd values of every type
health_docs = st.fixed_dictionaries(
    {},
    optional={
        k: json_values
        for k in (
            "t", "name", "version", "queue_depth", "oldest_unsent_age_s", "connected",
            "protocol", "last_seq", "readings", "flagged", "anomaly_rate", "uptime_s", "clock",
            "modules", "attestation", "last_error", "ignored_messages", "batches_sealed",
        )
    },
)  # fmt: skip
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _well_typed(x: Any) -> None:
    """Only what JSON.parse gives back unchanged and the page can draw."""
    if isinstance(x, bool) or x is None or isinstance(x, str):
        return
    if isinstance(x, int):
        assert abs(x) <= fields.MAX_INT
    elif isinstance(x, float):
        assert math.isfinite(x)  # JSON.parse has no NaN or Infinity
    elif isinstance(x, list):
        for v in x:
            _well_typed(v)
    else:
        assert isinstance(x, dict)
        for k, v in x.items():
            assert isinstance(k, str)
            _well_typed(v)


@FAST
@given(health_docs)
def test_health_fields_come_out_well_typed(doc: dict[str, Any]) -> None:
    out = fields.health(doc)
    _well_typed(out)
    for key in ("queue_depth", "readings", "last_seq"):
        assert key not in out or (type(out[key]) is int and out[key] >= 0)
    if "t" in out:
        assert 0 <= out["t"] <= fields.LATEST_TIME
    for key in ("name", "version", "protocol"):
        assert key not in out or (isinstance(out[key], str) and len(out[key]) <= fields.TEXT)
    a = out.get("attestation")
    assert a is None or a["score"] is None or 0 <= a["score"] <= 1
    json.loads(dumps(out))


@FAST
@given(health_docs, json_values)
def test_a_shown_gateway_takes_any_json(health: dict[str, Any], sensors: Any) -> None:
    fleet = Fleet(P)
    d = DEV.device_id
    fleet.handle(f"{P}/{d}/birth", BIRTH, NOW)
    fleet.handle(f"{P}/{d}/health", json.dumps(health).encode(), NOW)
    state = {"name": sensors, "updated": sensors, "sensors": {"s": {"q": sensors}, "x": sensors}}
    fleet.handle(f"{P}/{d}/state", json.dumps(state).encode(), NOW)
    doc = fleet.detail(d)
    assert doc is not None
    _well_typed(doc)
    json.loads(dumps(fleet.snapshot()))  # allow_nan=False: raises on NaN or infinity


def test_odd_values_named_in_the_issue() -> None:
    """A string where a number belongs, NaN, a huge nesting, a time of 1e300."""
    fleet = Fleet(P)
    d = DEV.device_id
    fleet.handle(f"{P}/{d}/birth", BIRTH, NOW)
    fleet.handle(f"{P}/{d}/health", b'{"queue_depth": "many", "t": 1e300, "uptime_s": NaN}', NOW)
    fleet.handle(f"{P}/{d}/health", b'{"queue_depth": "many", "t": 1e300, "readings": -3}', NOW)
    h = fleet.detail(d)["health"]  # type: ignore[index]
    assert "queue_depth" not in h and "t" not in h and "readings" not in h
    fleet.handle(f"{P}/{d}/health", b"[" * 50_000 + b"]" * 50_000, NOW)
    fleet.handle(f"{P}/{d}/health", b'{"t": ' + b"9" * 5000 + b"}", NOW)
    reading = {"v": "21", "u": ["Cel"], "t": 1e300, "as": "x", "af": "spike"}
    fleet.handle(f"{P}/{d}/state", json.dumps({"sensors": {"c": {"t": reading}}}).encode(), NOW)
    s = fleet.detail(d)
    assert s is not None and s["latest"] == {}
    json.loads(dumps(fleet.snapshot()))
