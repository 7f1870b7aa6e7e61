"""`payloads.decode_batch` (the records checked in bulk) against `decode_batch_reference` (every
record through check_record): the same Batch or the same finding, with the same detail, for
honest batches, hand-made records of any shape and randomly mutated payloads. Both read the
payload through the strict scan (gateway/wire/strict.py); record bytes are slices of it."""

from __future__ import annotations

import math
from typing import Any

import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.wire import dcbor, merkle, payloads
from gateway.wire.verify import first_tag
from tests import make_batches as mb

A = mb.identity()
SETTINGS = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def outcome(decode: Any, payload: bytes) -> tuple[Any, ...]:
    """What a decoder made of `payload`, comparable across decoders: the finding, or every
    field of the Batch with exact types (1, 1.0 and true are equal in Python, not in CBOR)."""
    try:
        b = decode(payload)
    except payloads.PayloadError as e:
        return ("finding", e.kind, e.detail)
    except Exception as e:  # both must fail the same way on what neither expects
        return ("raised", type(e).__name__, str(e))
    return ("batch", repr(b), b.record_bytes)


def agree(payload: bytes) -> tuple[Any, ...]:
    fast = outcome(payloads.decode_batch, payload)
    assert fast == outcome(payloads.decode_batch_reference, payload)
    try:
        sc = payloads.scan_payload(payload)
    except payloads.PayloadError:
        pass
    else:  # a caller that scanned the payload already (verify.examine) gets the same
        assert fast == outcome(lambda p: payloads.decode_batch(p, decoded=sc), payload)
    if fast[0] == "batch":
        assert first_tag(payload) is None  # a decoded batch never holds a tag
    return fast


def took_fast_path(payload: bytes) -> bool:
    m = payloads._batch_map(payloads.scan_payload(payload).value)
    return payloads._records_fast(m[5])


# --- strategies -------------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False)
# Numbers a sensor gives, and the edges of dCBOR's number rules: integral floats (written as
# integers), halves and singles (short floats), -0.0, values beyond 2**64, big integers.
numbers = st.one_of(
    finite,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0.0, -0.0, 21.0, 21.25, 0.1, 1e300, 2.0**64, 2.0**65, 65504.0, 1.5e-5]),
    st.decimals(places=2, min_value=-1000, max_value=100_000, allow_nan=False).map(float),
)
scores = st.one_of(st.floats(min_value=0, max_value=1), st.sampled_from([0, 1, 0.125, 0.0]))
texts = st.text(min_size=1, max_size=30)
flag_lists = st.lists(st.sampled_from(["spike", "range", "stuck", "ü-flag", "x" * 30]), max_size=3)


@st.composite
def honest_records(draw: st.DrawFn) -> bytes:
    """A record from the production encoder, as a gateway writes it."""
    name = draw(st.sampled_from(["climate/temperature", "pm/pm2_5", "co2/co2"]) | texts)
    unit = draw(st.sampled_from(["Cel", "%RH", "ug/m3", "ppm"]) | texts)
    flags = draw(flag_lists)
    value = draw(st.none() | numbers) if flags else draw(numbers)
    return payloads.encode_record(name, unit, value, draw(numbers), draw(scores), flags)


@st.composite
def honest_payloads(draw: st.DrawFn) -> bytes:
    recs = draw(st.lists(honest_records(), max_size=12))
    dropped = draw(
        st.lists(
            st.builds(payloads.DropReceipt, st.integers(1, 10**6), numbers, numbers, texts),
            max_size=2,
        )
    )
    payload, _ = payloads.encode_batch(
        did=A.did,
        seq=draw(st.integers(0, 2**40)),
        prev=draw(st.binary(min_size=32, max_size=32)),
        sealed=draw(numbers),
        records=recs,
        clock_synced=draw(st.booleans()),
        clock_source=draw(st.sampled_from(["ntp", "rtc"]) | texts),
        modules=mb.MODULES,
        dropped=dropped,
        boot=mb.BOOT,
    )
    return payload


# Any CBOR-ish value a hostile device could put in a record.
leaves = st.one_of(
    st.none(),
    st.booleans(),
    numbers,
    st.floats(),  # NaN and infinities too
    st.text(max_size=5),
    st.binary(max_size=4),
    st.just(cbor2.CBORTag(1, 5)),
)
values = st.recursive(leaves, lambda kids: st.lists(kids, max_size=3), max_leaves=6)
labels = st.one_of(
    st.sampled_from([0, 1, 2, 6, "as", "af", 3, -2, "x", True, 1.0, False]),
    st.integers(-30, 30),
)


@st.composite
def raw_records(draw: st.DrawFn) -> bytes:
    """A record map built by hand: usually close to a valid one, then bent: labels added,
    dropped or of the wrong type, values of any type, keys in any order, encoded canonically
    or not."""
    rec: dict[Any, Any] = {0: draw(texts), 1: draw(texts), 6: draw(numbers)}
    if draw(st.booleans()):
        rec[2] = draw(numbers)
    if draw(st.booleans()):
        rec["as"] = draw(scores)
    if draw(st.booleans()):
        rec["af"] = draw(flag_lists)
    for _ in range(draw(st.integers(0, 2))):
        rec[draw(labels)] = draw(values)
    for k in draw(st.lists(st.sampled_from(sorted(rec, key=repr)), max_size=2)):
        rec.pop(k, None)
    items = list(rec.items())
    if draw(st.booleans()):
        items = draw(st.permutations(items))
    how = draw(st.sampled_from(["dcbor", "canonical", "plain"]))
    if how == "dcbor":
        try:
            return dcbor.dumps(dict(items))
        except ValueError:
            how = "canonical"
    return cbor2.dumps(dict(items), canonical=how == "canonical")


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """An honest payload with a few bytes flipped, dropped, inserted or overwritten."""
    data = bytearray(draw(honest_payloads()))
    for _ in range(draw(st.integers(1, 3))):
        if not data:
            break
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "drop", "insert", "set", "truncate"]))
        if op == "flip":
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "drop":
            del data[i]
        elif op == "insert":
            data.insert(i, draw(st.integers(0, 255)))
        elif op == "set":
            data[i] = draw(st.sampled_from([0x00, 0x18, 0xF4, 0xF5, 0xF6, 0xF9, 0xFB, 0xC2, 0xFF]))
        else:
            del data[i:]
    return bytes(data)


def with_fields(**raw: bytes) -> bytes:
    """The honest field bytes of a 3-record batch, some replaced by raw bytes (key numbers as
    `k<n>`), in ascending key order."""
    f = mb.canonical_fields(A, 0, payloads.ZERO_PREV)
    for k, v in raw.items():
        f[int(k[1:])] = v
    return mb.assemble(dict(sorted(f.items())))


# --- properties ---------------------------------------------------------------------------------


@SETTINGS
@given(honest_payloads())
def test_honest_batches_decode_alike(payload: bytes) -> None:
    assert agree(payload)[0] in ("batch", "finding")  # findings: e.g. NaN-free but score 1e300


@SETTINGS
@given(st.lists(st.one_of(honest_records(), raw_records()), min_size=1, max_size=6))
def test_hand_made_records_decode_alike(recs: list[bytes]) -> None:
    f = mb.canonical_fields(A, 0, payloads.ZERO_PREV, recs)
    agree(mb.assemble(f))


@SETTINGS
@given(st.lists(st.one_of(honest_records(), raw_records()), min_size=1, max_size=4))
def test_records_under_a_wrong_root_decode_alike(recs: list[bytes]) -> None:
    f = mb.canonical_fields(A, 0, payloads.ZERO_PREV, recs)
    f[6] = dcbor.dumps(merkle.root(recs[1:]))
    agree(mb.assemble(f))


@SETTINGS
@given(mutated())
def test_mutated_payloads_decode_alike(payload: bytes) -> None:
    agree(payload)


@SETTINGS
@given(
    st.sampled_from([3, 4, 7, 8, 9, 10]),
    st.one_of(values, st.dictionaries(st.text(max_size=6), values, max_size=3)),
    st.booleans(),
)
def test_other_fields_decode_alike(key: int, value: Any, canonical: bool) -> None:
    """Batch fields besides the records, of any value, encoded canonically or not."""
    try:
        raw = dcbor.dumps(value) if canonical else cbor2.dumps(value)
    except ValueError:
        raw = cbor2.dumps(value, canonical=True)
    agree(with_fields(**{f"k{key}": raw}))


@SETTINGS
@given(honest_payloads())
def test_trailing_bytes_and_extra_keys_decode_alike(payload: bytes) -> None:
    agree(payload + b"\x00")
    m = cbor2.loads(payload)
    m[11] = 1
    agree(cbor2.dumps(m, canonical=True))


# --- the fast path is the one honest batches take --------------------------------------------


def test_gateway_like_batches_take_the_fast_path() -> None:
    recs = [
        payloads.encode_record("climate/temperature", "Cel", 21.37, mb.SEALED + 0.25, 0.0123, []),
        payloads.encode_record("climate/pressure", "Pa", 101325.0, mb.SEALED + 1.5, 0, []),
        payloads.encode_record("pm/pm2_5", "ug/m3", 7.3, mb.SEALED + 2, 0.97, ["spike"]),
        payloads.encode_record("co2/co2", "ppm", None, mb.SEALED + 3, 1, ["sensor-error"]),
    ]
    payload = mb.batch_payload(A, 3, bytes(range(32)), recs)
    assert took_fast_path(payload)
    b = payloads.decode_batch(payload)
    assert b == payloads.decode_batch_reference(payload)
    assert b.record_bytes == recs and b.tag_free and first_tag(payload) is None
    empty = mb.batch_payload(A, 0, payloads.ZERO_PREV, [])
    assert took_fast_path(empty) and payloads.decode_batch(empty).records == []


@pytest.mark.parametrize(
    ("record", "kind"),
    [
        ({0: "c/t", 1: "Cel", 2: 21.0, 6: 1}, "non-deterministic"),  # integral float
        ({0: "c/t", 1: "Cel", 2: -0.0, 6: 1}, "non-deterministic"),
        ({0: "c/t", 1: "Cel", 2: math.nan, 6: 1}, "nan"),
        ({0: "c/t", 1: "Cel", 2: math.inf, 6: 1}, "nan"),
        ({0: "c/t", True: "Cel", 2: 21, 6: 1}, "bad-record"),  # true == 1 in Python
        ({0: "c/t", 1.0: "Cel", 2: 21, 6: 1}, "non-deterministic"),  # 1.0 is an integer
        ({0: "c/t", 1: "Cel", 2: 21, 6: 1, "af": []}, "bad-record"),
        ({0: "c/t", 1: "", 2: 21, 6: 1}, "bad-record"),
        ({0: "c/t", 1: "Cel", 2: 21, 6: 1, "as": 1.5}, "bad-record"),
    ],
)
def test_the_fast_path_leaves_findings_to_the_reference(record: dict[Any, Any], kind: str) -> None:
    payload = mb.batch_payload(A, 0, payloads.ZERO_PREV, [cbor2.dumps(record, canonical=True)])
    if kind in ("bad-record", "base-fields"):  # the scan passes it: the records check decides
        assert not took_fast_path(payload)
    assert agree(payload)[:2] == ("finding", kind)


def test_tags_are_refused_before_decoding() -> None:
    """A bignum time (tag 2) re-encodes to itself; the scan refuses it from its bytes."""
    rec = dcbor.dumps({0: "c/t", 1: "Cel", 2: 21.5, 6: 2**64 + 5})
    payload = mb.batch_payload(A, 0, payloads.ZERO_PREV, [rec])
    assert first_tag(payload) == 2
    with pytest.raises(payloads.PayloadError, match="CBOR tag 2 is not allowed") as e:
        payloads.decode_batch(payload)
    assert e.value.kind == "malformed"
