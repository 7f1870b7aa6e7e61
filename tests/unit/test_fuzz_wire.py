"""Bounded property-based fuzzing of every reader of untrusted bytes in gateway/wire and of the
chain head: nothing but a decoder's own documented error leaves it, and every message gets a
finding. Random bytes, and well-formed CBOR with tags and nesting built by a strategy, signed
with a throwaway key so that `examine` gets past the signature to the payload."""

from __future__ import annotations

import contextlib
from typing import Any

import cbor2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.device import head
from gateway.wire import cose, payloads, proof, strict
from gateway.wire.verify import ACCEPTED, KIND_ORDER, Examined, Finding, Verifier, decide, examine
from tests import hostile as h
from tests import make_batches as mb

FAST = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
SIGNER = mb.identity(mb.SEED_C)
TYPS = [cose.TYP_BATCH, cose.TYP_BIRTH, cose.TYP_ATTESTATION, cose.TYP_HEAD, cose.TYP_MODEL]

# --- well-formed CBOR, built as bytes (so tags and odd forms survive) ---------------------------

_scalar = st.one_of(
    st.integers(-(2**64), 2**64 - 1).map(lambda n: h.head(0, n) if n >= 0 else h.head(1, -1 - n)),
    st.binary(max_size=40).map(lambda b: h.head(2, len(b)) + b),
    st.text(max_size=20).map(h.text),
    st.sampled_from([b"\xf4", b"\xf5", b"\xf6", b"\xf7", b"\xf9\x7e\x00", b"\xf9\x3c\x00"]),
    st.floats().map(lambda x: cbor2.dumps(x)),
    st.sampled_from([*list(h.unknown_tags().values()), h.self_reference(), h.sharing_bomb(8)]),
)


def _extend(inner: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.lists(inner, max_size=5).map(lambda xs: h.array(*xs)),
        st.lists(st.tuples(_scalar, inner), max_size=4).map(
            lambda kv: h.head(5, len(kv)) + b"".join(k + v for k, v in kv)
        ),
        st.tuples(st.sampled_from([0, 1, 2, 4, 18, 24, 25, 28, 29, 258, 55799]), inner).map(
            lambda t: h.tag(*t)
        ),
    )


cbor_items = st.recursive(_scalar, _extend, max_leaves=30)
# Batch-shaped maps with any of their fields replaced: the parts a stranger controls.
batch_like = st.fixed_dictionaries(
    {
        k: st.one_of(st.just(v), cbor_items)
        for k, v in mb.canonical_fields(SIGNER, 0, bytes(32)).items()
    }
).map(lambda f: h.head(5, len(f)) + b"".join(h.head(0, k) + v for k, v in sorted(f.items())))
payloads_any = st.one_of(cbor_items, batch_like, st.binary(max_size=200))


def _assert_finding(f: Finding | Examined) -> None:
    if isinstance(f, Finding):
        assert f.kind in KIND_ORDER
        assert f.forged == (f.kind not in ACCEPTED)


@FAST
@given(st.one_of(st.binary(max_size=300), cbor_items))
def test_strict_loads_raises_only_decode_error(data: bytes) -> None:
    try:
        strict.loads(data)
    except strict.DecodeError as e:
        assert "byte" in str(e) or "not decodable" in str(e)
    try:
        strict.loads(data, deterministic=True, marks=[[], [], []])
    except strict.DecodeError as e:
        assert e.kind in ("malformed", "non-deterministic", "nan")


@FAST
@given(st.one_of(st.binary(max_size=300), cbor_items.map(lambda b: h.tag(18, b))))
def test_cose_verify1_raises_only_verify_error(data: bytes) -> None:
    from gateway.core.errors import VerifyError

    try:
        cose.verify1(data)
    except VerifyError as e:
        assert e.kind in ("malformed", "bad-signature")
    cose.typ_of(data)  # never raises either


@FAST
@given(payloads_any)
def test_decode_batch_raises_only_payload_error(payload: bytes) -> None:
    for decode in (payloads.decode_batch, payloads.decode_batch_reference):
        try:
            decode(payload)
        except payloads.PayloadError as e:
            assert e.kind in KIND_ORDER


@FAST
@given(payloads_any, st.sampled_from(TYPS))
def test_examine_gives_every_signed_payload_a_finding(payload: bytes, typ: str) -> None:
    message = h.signed(payload, typ, SIGNER)
    found = examine(message, "fuzz")
    _assert_finding(found)
    v = Verifier()
    f = v.check(message, source="fuzz")
    assert f.kind in KIND_ORDER and sum(v.counts.values()) == 1


@FAST
@given(st.binary(max_size=400))
def test_examine_and_check_never_raise_on_bytes(data: bytes) -> None:
    _assert_finding(examine(data))
    assert Verifier(allowed_dids=[SIGNER.did]).check(data).kind in KIND_ORDER


class _Link:
    def __init__(self, batch_id: Any, prev: Any) -> None:
        self.batch_id, self.prev = batch_id, prev


anything = st.one_of(st.integers(), st.binary(max_size=40), st.none(), st.text(max_size=5))


@FAST
@given(
    seq=anything,
    prev=anything,
    bid=anything,
    last=st.one_of(st.none(), st.integers(), st.text(max_size=3)),
    links=st.dictionaries(st.integers(-2, 10), st.tuples(anything, anything), max_size=5),
    stated=st.lists(st.dictionaries(st.text(max_size=4), anything, max_size=3), max_size=3),
)
def test_decide_never_raises(
    seq: Any, prev: Any, bid: Any, last: Any, links: dict[int, Any], stated: Any
) -> None:
    kind, detail = decide(
        seq, prev, bid, last=last, link=lambda s: _Link(*links[s]) if s in links else None,
        stated=stated,
    )  # fmt: skip
    assert kind in KIND_ORDER and isinstance(detail, str)


@FAST
@given(payloads_any, st.sampled_from([cose.TYP_HEAD, cose.TYP_BATCH]))
def test_head_read_never_raises(payload: bytes, typ: str) -> None:
    assert head.read(h.signed(payload, typ, SIGNER), SIGNER) is None or typ == cose.TYP_HEAD


@FAST
@given(
    st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200),
        st.recursive(
            st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
            lambda inner: st.one_of(
                st.lists(inner, max_size=4),
                st.dictionaries(
                    st.sampled_from([*sorted(proof._REQUIRED | proof._OPTIONAL), "x"]), inner
                ),
            ),
            max_leaves=20,
        ),
    )
)
def test_proofs_never_raise(doc: Any) -> None:
    result = proof.check_proof(doc)
    assert not result.ok and result.failure
    if isinstance(doc, bytes | str):
        with contextlib.suppress(ValueError, RecursionError):
            proof.parse_proof(doc)


@FAST
@given(cbor_items)
def test_a_proof_record_is_judged_strictly(record: bytes) -> None:
    good = proof.make_proof(mb.Chain(mb.identity(mb.SEED_A)).take(1)[0].message, 0)
    forged = {**good, "record": record.hex()}
    result = proof.check_proof(forged)
    assert not result.ok or record.hex() == good["record"]
