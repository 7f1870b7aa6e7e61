"""The verifier of spec section 9: adversarial batches are rejected or recorded exactly as the
spec says, nothing raises, and files and a real broker feed it the same way."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import time
import tracemalloc
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import aiomqtt
import cbor2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.cli.verify_live import verify_live
from gateway.core.errors import ConfigError, PathNotFoundError, UplinkError
from gateway.wire import cose, dcbor, merkle, payloads
from gateway.wire.identity import Identity
from gateway.wire.loss import loss_why, parse_loss
from gateway.wire.verify import (
    EVIDENCE_PER_DEVICE,
    GAPS_KEPT,
    MAX_MESSAGE,
    Equivocation,
    Finding,
    Tally,
    Verifier,
    exit_code,
    first_tag,
    format_finding,
    summary,
    verify_paths,
)
from tests import make_batches as mb
from tests.brokers import Mosquitto, amqtt_broker, free_port

A = mb.identity(mb.SEED_A)
B = mb.identity(mb.SEED_B)
ZERO = payloads.ZERO_PREV


def honest(n: int = 5) -> list[mb.Built]:
    return mb.Chain(A).take(n)


def kinds(v: Verifier, messages: list[bytes]) -> list[str]:
    return [v.check(m).kind for m in messages]


def signed(fields: Mapping[Any, bytes], ident: Identity = A) -> bytes:
    return mb.sign(ident, mb.assemble(fields))


# --- the honest path ------------------------------------------------------------------------------


def test_honest_chain_is_valid() -> None:
    v = Verifier()
    chain = honest(4)
    found = [v.check(b.message, source=f"b{b.seq}") for b in chain]
    assert [f.kind for f in found] == ["valid"] * 4
    assert found[0].detail == "starts the chain at seq 0"
    assert found[1].detail == "extends the chain"
    f = found[2]
    assert (f.did, f.seq, f.batch_id, f.records, f.source) == (A.did, 2, chain[2].id, 3, "b2")
    assert not f.forged and f.device_id == A.device_id
    assert v.counts == {"valid": 4}
    assert v.verified_records() == {A.did: 12}
    assert v.status(A.did) == "ok" and v.missing(A.did) == []
    assert exit_code(found) == 0


def test_first_batch_starts_the_chain_at_any_seq() -> None:
    chain = honest(8)
    v = Verifier()
    assert kinds(v, [b.message for b in chain[5:]]) == ["valid"] * 3
    assert v.check(chain[5].message).detail == "already seen"


def test_duplicates_are_accepted_idempotently() -> None:
    chain = honest(2)
    v = Verifier()
    assert kinds(v, [chain[0].message, chain[0].message, chain[1].message, chain[0].message]) == [
        "valid", "duplicate", "valid", "duplicate",
    ]  # fmt: skip
    assert v.verified_records() == {A.did: 6}


def test_alg_minus_19_is_accepted_and_is_the_same_batch() -> None:
    c0 = honest(1)[0]
    p19 = dcbor.dumps({1: cose.ALG_ED25519, 4: A.kid, 16: cose.TYP_BATCH})
    v = Verifier()
    assert v.check(mb.sign_raw(A, c0.payload, protected=p19)).kind == "valid"
    assert v.check(c0.message).kind == "duplicate"  # batch id is over the payload only


def test_large_batch() -> None:
    recs = [mb.record(i) for i in range(5000)]
    f = Verifier().check(mb.sign(A, mb.batch_payload(A, 0, ZERO, recs)))
    assert (f.kind, f.records) == ("valid", 5000)


def test_failed_reading_and_drop_receipts_are_valid() -> None:
    failed = payloads.encode_record("pm/pm2_5", "ug/m3", None, mb.SEALED, 1.0, ["sensor-error"])
    drop = payloads.DropReceipt(n=3, t_from=mb.SEALED - 10.5, t_to=mb.SEALED, why="spool full")
    payload = mb.batch_payload(A, 0, ZERO, [failed], dropped=[drop], synced=False)
    assert Verifier().check(mb.sign(A, payload)).kind == "valid"


# --- signature and identity -----------------------------------------------------------------------


def test_bad_signature() -> None:
    m = honest(1)[0].message
    f = Verifier().check(m[:-1] + bytes([m[-1] ^ 0x80]))
    assert f.kind == "bad-signature" and f.forged
    assert (f.did, f.seq, f.records) == (A.did, 0, 3)  # claimed, for the operator's eyes
    assert f.batch_id is None


def test_tampered_record_breaks_the_signature() -> None:
    c0 = honest(1)[0]
    env = cbor2.loads(c0.message).value
    tampered = c0.payload.replace(bytes.fromhex("f94d50"), bytes.fromhex("f94d60"))
    assert tampered != c0.payload
    msg = cbor2.dumps(cbor2.CBORTag(18, [env[0], {}, tampered, env[3]]))
    assert Verifier().check(msg).kind == "bad-signature"


def test_signature_by_another_key_under_our_kid() -> None:
    c0 = honest(1)[0]
    protected = cose.protected_header(A.kid, cose.TYP_BATCH)
    sig = B.sign(cose.sig_structure(protected, c0.payload))
    msg = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, c0.payload, sig]))
    assert Verifier().check(msg).kind == "bad-signature"


def test_weak_key_forgery_is_rejected() -> None:
    assert Verifier().check(mb.weak_key_forgery()).kind == "bad-signature"


def test_kid_did_mismatch() -> None:
    f = Verifier().check(mb.sign(A, mb.batch_payload(A, 0, ZERO, did=B.did)))
    assert f.kind == "did-mismatch" and f.forged
    assert f.did == A.did and B.did in f.detail


def test_unknown_device_is_rejected_not_learned() -> None:
    v = Verifier(allowed_dids=[B.did])
    chain = honest(2)
    assert kinds(v, [chain[0].message, chain[1].message]) == ["unknown-device"] * 2
    assert v.verified_records() == {}
    birth = mb.sign(A, mb.birth_payload(A), cose.TYP_BIRTH)
    assert v.check(birth).kind == "unknown-device"


def test_allow_list_takes_dids_or_device_ids() -> None:
    c0 = honest(1)[0].message
    assert Verifier(allowed_dids=[A.device_id]).check(c0).kind == "valid"
    assert Verifier(allowed_dids=[A.did, B.did]).check(c0).kind == "valid"
    with pytest.raises(ConfigError) as e:
        Verifier(allowed_dids=[A.did, "did:key:zNotAKey", "did:web:example.com"])
    assert len(e.value.problems) == 2


def test_did_check_comes_before_the_allow_list() -> None:
    msg = mb.sign(A, mb.batch_payload(A, 0, ZERO, did=B.did))
    assert Verifier(allowed_dids=[B.did]).check(msg).kind == "did-mismatch"


# --- envelope -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("unknown typ", lambda p: mb.sign_raw(A, p, typ="application/json")),
        ("unprotected kid", lambda p: mb.sign_raw(A, p, unprotected=cbor2.dumps({4: A.kid}))),
        ("extra header", lambda p: mb.sign_raw(
            A, p, protected=dcbor.dumps({1: -8, 3: 0, 4: A.kid, 16: cose.TYP_BATCH}))),
        ("alg as float", lambda p: mb.sign_raw(
            A, p, protected=cbor2.dumps({1: -8.0, 4: A.kid, 16: cose.TYP_BATCH}))),
        ("alg key true", lambda p: mb.sign_raw(
            A, p, protected=cbor2.dumps({True: -8, 4: A.kid, 16: cose.TYP_BATCH}))),
        ("alg ES256", lambda p: mb.sign_raw(
            A, p, protected=dcbor.dumps({1: -7, 4: A.kid, 16: cose.TYP_BATCH}))),
        ("kid without multicodec", lambda p: mb.sign_raw(
            A, p, protected=dcbor.dumps({1: -8, 4: A.public_key, 16: cose.TYP_BATCH}))),
        ("header trailing byte", lambda p: mb.sign_raw(
            A, p, protected=cose.protected_header(A.kid, cose.TYP_BATCH) + b"\x00")),
        ("tag 98", lambda p: b"\xd8\x62" + mb.sign(A, p)[1:]),
        ("message trailing byte", lambda p: mb.sign(A, p) + b"\x00"),
        ("short signature", lambda p: mb.sign(A, p)[:-66] + b"\x58\x3f" + bytes(63)),
    ],
)  # fmt: skip
def test_malformed_envelopes(name: str, make: Callable[[bytes], bytes]) -> None:
    payload = honest(1)[0].payload
    msg = make(payload)
    f = Verifier().check(msg)
    assert f.kind == "malformed", (name, f)


# --- payload --------------------------------------------------------------------------------------


def test_resigned_batch_with_wrong_root() -> None:
    f = mb.canonical_fields(A, 0, ZERO)
    f[6] = dcbor.dumps(merkle.root(mb.records()[:2]))
    assert Verifier().check(signed(f)).kind == "bad-root"
    f[6] = dcbor.dumps(bytes(32))
    assert Verifier().check(signed(f)).kind == "bad-root"


def test_resigned_batch_with_a_changed_record() -> None:
    """The root was computed before a record was swapped: the device would have to lie."""
    f = mb.canonical_fields(A, 0, ZERO)
    recs = mb.records()
    recs[1] = payloads.encode_record("climate/humidity", "%RH", 99.5, mb.SEALED, 0, [])
    f[5] = mb.head(4, 3) + b"".join(recs)
    found = Verifier().check(signed(f))
    assert (found.kind, found.records) == ("bad-root", 3)


def test_nan_and_infinity() -> None:
    for raw in ("f97e00", "f97c00", "f9fc00", "fb7ff8000000000000"):
        rec = mb._record_raw(bytes.fromhex(raw))
        assert Verifier().check(mb.sign(A, mb.batch_payload(A, 0, ZERO, [rec]))).kind == "nan"


def test_nan_outside_the_records() -> None:
    f = mb.canonical_fields(A, 0, ZERO)
    f[9] = cbor2.dumps([{"n": 1, "from": float("nan"), "to": 1, "why": "x"}], canonical=True)
    fields = dict(sorted(f.items()))
    assert Verifier().check(signed(fields)).kind == "nan"
    f = mb.canonical_fields(A, 0, ZERO)
    f[4] = bytes.fromhex("f97c00")  # sealed = +inf
    assert Verifier().check(signed(f)).kind == "nan"


def test_base_fields() -> None:
    for label in (-2, -1, -6):
        rec = dcbor.dumps({label: "x", 0: "climate/t", 1: "Cel", 2: 21, 6: mb.SEALED})
        f = Verifier().check(mb.sign(A, mb.batch_payload(A, 0, ZERO, [rec])))
        assert f.kind == "base-fields", label


@pytest.mark.parametrize(
    ("record", "kind"),
    [
        ({0: "climate/t", 1: "Cel", 2: 21}, "bad-record"),  # no time
        ({0: "climate/t", 2: 21, 6: 1}, "bad-record"),  # no unit
        ({1: "Cel", 2: 21, 6: 1}, "bad-record"),  # no name
        ({0: "climate/t", 1: "Cel", 6: 1}, "bad-record"),  # no value, no flag
        ({0: "climate/t", 1: "Cel", 6: 1, "af": []}, "bad-record"),  # empty flags
        ({0: "climate/t", 1: "Cel", 2: "21", 6: 1}, "bad-record"),  # value text
        ({0: "climate/t", 1: "Cel", 2: True, 6: 1}, "bad-record"),  # value bool
        ({0: "climate/t", 1: "Cel", 2: 21, 6: 1, "as": 1.5}, "bad-record"),  # score > 1
        ({0: "climate/t", 1: "Cel", 2: 21, 6: 1, 3: "x"}, "bad-record"),  # string value label
        ({0: "climate/t", True: "Cel", 2: 21, 6: 1}, "bad-record"),  # unit under key true
        # 1.0 is the integer 1 in the encoding of spec section 7, judged from the bytes first
        ({0: "climate/t", 1.0: "Cel", 2: 21, 6: 1}, "non-deterministic"),
    ],
)
def test_bad_records(record: dict[object, object], kind: str) -> None:
    rec = cbor2.dumps(record, canonical=True)
    f = Verifier().check(mb.sign(A, mb.batch_payload(A, 0, ZERO, [rec])))
    assert f.kind == kind, f.detail


def test_non_deterministic_encodings() -> None:
    t = mb.SEALED - 60
    cases = {
        "integral float": mb.raw_record({0: "c/t", 1: "Cel", 2: 21.0, 6: t}),
        "double for a half": mb.raw_record({0: "c/t", 1: "Cel", 2: 21.5, 6: t}),
        "unsorted labels": mb.raw_record({6: t, 2: 21, 1: "Cel", 0: "c/t"}),
        "negative zero": mb._record_raw(bytes.fromhex("f98000")),
        "long head": mb._record_raw(bytes.fromhex("1815")),
        "indefinite text": b"\xa4\x00\x7f\x63c/t\xff\x01\x63Cel\x02\x15\x06\x01",
    }  # fmt: skip
    for name, rec in cases.items():
        found = Verifier().check(mb.sign(A, mb.batch_payload(A, 0, ZERO, [rec])))
        assert found.kind == "non-deterministic", (name, found)
    f = mb.canonical_fields(A, 0, ZERO)
    f[2] = b"\x18\x00"
    assert Verifier().check(signed(f)).kind == "non-deterministic"
    f = mb.canonical_fields(A, 0, ZERO)
    unsorted = {k: f[k] for k in (2, 1, 3, 4, 5, 6, 7, 8, 10)}
    assert Verifier().check(signed(unsorted)).kind == "non-deterministic"
    f = mb.canonical_fields(A, 0, ZERO)
    dup = mb.assemble(f)[1:] + b"\x02\x00"  # seq twice
    assert Verifier().check(mb.sign(A, b"\xaa" + dup)).kind == "non-deterministic"


def test_batch_shape() -> None:
    cases = {
        7: dcbor.dumps({"synced": True, "source": "ntp", "extra": 1}),
        8: dcbor.dumps([["ranges", "1.0", b"short"]]),
        9: dcbor.dumps([{"n": 1, "from": 0, "to": 1}]),
        10: dcbor.dumps(b"\x00" * 15),
        3: dcbor.dumps(b"\x00" * 31),
    }
    for key, raw in cases.items():
        f = mb.canonical_fields(A, 0, ZERO)
        f[key] = raw
        assert Verifier().check(signed(dict(sorted(f.items())))).kind == "malformed", key
    f = mb.canonical_fields(A, 0, ZERO)
    del f[8]
    assert Verifier().check(signed(f)).kind == "malformed"
    f = mb.canonical_fields(A, 0, ZERO)
    f[9] = dcbor.dumps([])  # dropped is absent when empty, never []
    assert Verifier().check(signed(dict(sorted(f.items())))).kind == "malformed"


def test_no_tags_inside_the_payload() -> None:
    f = mb.canonical_fields(A, 0, ZERO)
    f[8] = dcbor.dumps([["ranges", "1.0", cbor2.CBORTag(24, hashlib.sha256(b"").digest())]])
    assert Verifier().check(signed(f)).kind == "malformed"
    assert first_tag(dcbor.dumps([1, {"a": [b"x", cbor2.CBORTag(999, 1)]}])) == 999
    assert first_tag(dcbor.dumps([1, {"a": [b"x", 2**70]}])) == 2
    assert first_tag(honest(1)[0].payload) is None


def test_payload_that_is_not_a_batch_map() -> None:
    only_did = dcbor.dumps({1: A.did})
    for payload in (b"", b"\x80", b"\xa1\x01\x02", only_did, b"\x81" * 1000 + b"\x00"):
        assert Verifier().check(mb.sign(A, payload)).kind == "malformed", payload[:4]


# --- the chain (spec section 9 step 5) ------------------------------------------------------------


def test_prev_mismatch() -> None:
    chain = honest(2)
    wrong = mb.batch_payload(A, 1, b"\x22" * 32)
    v = Verifier()
    assert kinds(v, [chain[0].message, mb.sign(A, wrong), chain[1].message]) == [
        "valid", "prev-mismatch", "valid",
    ]  # fmt: skip
    assert v.status(A.did) == "replay"


def test_zero_prev_rules_apply_to_the_first_batch_too() -> None:
    assert Verifier().check(mb.sign(A, mb.batch_payload(A, 3, ZERO))).kind == "prev-mismatch"
    assert Verifier().check(mb.sign(A, mb.batch_payload(A, 0, b"\x01" * 32))).kind == (
        "prev-mismatch"
    )


def test_gap_is_recorded_and_accepted() -> None:
    chain = honest(7)
    v = Verifier()
    f = [v.check(chain[i].message) for i in (0, 1, 5, 6)]
    assert [x.kind for x in f] == ["valid", "valid", "gap", "valid"]
    assert f[2].detail == "seq 2-4 missing" and not f[2].forged
    assert v.gaps == [(A.did, 2, 4)]
    assert v.missing(A.did) == [2, 3, 4] and v.status(A.did) == "gap"
    assert exit_code(f) == 0


@pytest.mark.parametrize(
    ("why", "parsed"),
    [
        ("spool-rolled-back seq 12-17", ("spool-rolled-back", 12, 17)),
        ("spool-replaced seq 0-17", ("spool-replaced", 0, 17)),
        ("spool-rolled-back seq 5", ("spool-rolled-back", 5, 5)),
        ("a-later-reason seq 3-4", ("a-later-reason", 3, 4)),
        ("spool-full", None),
        ("spool-rolled-back seq 5-5", None),
        ("spool-rolled-back seq 7-3", None),
        ("spool-rolled-back seq 05", None),
        ("spool-rolled-back seq 5-", None),
        ("spool-rolled-back  seq 5", None),
        ("Spool-Rolled-Back seq 5", None),
        ("spool-rolled-back seq 5 ", None),
        ("spool-rolled-back seq 18446744073709551616", None),
    ],
)
def test_loss_receipt_grammar(why: str, parsed: tuple[str, int, int] | None) -> None:
    assert parse_loss(why) == parsed
    if parsed is not None:  # what the gateway writes reads back the same
        assert parse_loss(loss_why(*parsed)) == parsed


def _after_loss(chain: list[mb.Built], seq: int, *whys: str) -> bytes:
    receipts = [payloads.DropReceipt(3, mb.SEALED, mb.SEALED + 1, w) for w in whys]
    return mb.sign(A, mb.batch_payload(A, seq, chain[seq - 1].id, dropped=receipts))


def test_gap_names_the_reason_the_device_stated() -> None:
    chain = honest(6)
    v = Verifier()
    f = [v.check(m) for m in (chain[0].message, chain[1].message)]
    f.append(v.check(_after_loss(chain, 6, "spool-full", "spool-rolled-back seq 2-5")))
    assert [x.kind for x in f] == ["valid", "valid", "gap"] and exit_code(f) == 0
    assert f[2].detail == "seq 2-5 missing: spool-rolled-back (stated by the device)"
    assert v.gaps == [(A.did, 2, 5)]
    assert v.stated_losses == [(A.did, 2, 5, "spool-rolled-back")]
    assert v.status(A.did) == "gap"  # a stated loss is still a gap
    # The lost batches may arrive after all: they fit, as any reordered batch.
    assert kinds(v, [chain[i].message for i in (5, 4, 3, 2)]) == ["reordered"] * 4
    assert v.status(A.did) == "ok"


def test_stated_reasons_cover_what_they_say_and_no_more() -> None:
    chain = honest(8)
    v = Verifier()
    v.check(chain[0].message)
    found = v.check(
        _after_loss(chain, 8, "spool-replaced seq 1-2", "spool-rolled-back seq 6-9", "x seq 3")
    )
    assert found.detail == (
        "seq 1-7 missing: 1-2 spool-replaced, 3 x, 6-7 spool-rolled-back (stated by the device)"
    )
    assert v.stated_losses == [
        (A.did, 1, 2, "spool-replaced"),
        (A.did, 3, 3, "x"),
        (A.did, 6, 7, "spool-rolled-back"),
    ]


def test_loss_receipt_without_a_gap_changes_nothing() -> None:
    chain = honest(3)
    v = Verifier()
    f = [v.check(m) for m in (chain[0].message, chain[1].message, chain[2].message)]
    last = v.check(_after_loss(chain, 3, "spool-rolled-back seq 1-2"))
    assert [x.kind for x in f] + [last.kind] == ["valid"] * 4
    assert last.detail == "extends the chain" and v.stated_losses == []


def test_reordered_batch_fills_the_gap() -> None:
    chain = honest(4)
    v = Verifier()
    assert kinds(v, [chain[i].message for i in (0, 1, 3, 2)]) == [
        "valid", "valid", "gap", "reordered",
    ]  # fmt: skip
    assert v.missing(A.did) == [] and v.status(A.did) == "ok"
    assert v.gaps == [(A.did, 2, 2)]  # the gap stays on record


def test_two_reordered_batches() -> None:
    chain = honest(5)
    v = Verifier()
    assert kinds(v, [chain[i].message for i in (0, 1, 4, 3, 2)]) == [
        "valid", "valid", "gap", "reordered", "reordered",
    ]  # fmt: skip


def test_replay_of_a_batch_that_does_not_link() -> None:
    c = mb.Chain(A)
    chain = c.take(4)
    fork = c.alternative(2)  # signed by the device, prev = batch 1, but batch 3 follows the other
    v = Verifier()
    assert kinds(v, [chain[i].message for i in (0, 1, 3)] + [fork.message]) == [
        "valid", "valid", "gap", "replay",
    ]  # fmt: skip
    assert v.status(A.did) == "replay" and v.missing(A.did) == [2]
    assert v.check(chain[2].message).kind == "reordered"  # the real one still fits


def test_replay_from_an_older_chain() -> None:
    """The device lost its state and started over; the verifier already saw the new chain's
    later batches, so the old batch at a lower seq does not link on the seq-1 side."""
    old = mb.Chain(A).take(3)
    new = mb.Chain(A)
    for _ in range(4):
        new.next(mb.records(2))
    v = Verifier()
    assert kinds(v, [new.built[i].message for i in (0, 1, 3)]) == ["valid", "valid", "gap"]
    assert v.check(old[2].message).kind == "replay"


def test_equivocation_keeps_the_later_message_and_names_the_first() -> None:
    c = mb.Chain(A)
    chain = c.take(3)
    other = c.alternative(1)
    v = Verifier()
    found = [v.check(m) for m in (chain[0].message, chain[1].message, other.message)]
    assert [f.kind for f in found] == ["valid", "valid", "equivocation"]
    assert found[2].forged and found[2].batch_id == other.id
    assert v.evidence == [Equivocation(A.did, 1, chain[1].id, other.message)]
    assert chain[1].id.hex()[:16] in found[2].detail
    assert v.status(A.did) == "equivocation"
    assert v.check(chain[2].message).kind == "valid"  # the first-seen batch 1 stays in the chain
    assert v.check(other.message).kind == "equivocation"
    assert len(v.evidence) == 2


def test_equivocation_evidence_is_bounded_per_device_and_in_bytes() -> None:
    c = mb.Chain(A)
    first = c.take(1)[0]
    v = Verifier()
    v.check(first.message)
    others = [
        mb.sign(A, mb.batch_payload(A, 0, payloads.ZERO_PREV, mb.records(k)))
        for k in (1, 2, 4, 5, 6, 7)
    ]
    assert [v.check(m).kind for m in others] == ["equivocation"] * 6
    assert [e.message for e in v.evidence] == others[:EVIDENCE_PER_DEVICE]
    assert v.evidence_dropped == 6 - EVIDENCE_PER_DEVICE
    assert v.status(A.did) == "equivocation"


def test_equivocation_evidence_stops_at_its_byte_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gateway.wire.verify.EVIDENCE_BYTES", 1)
    c = mb.Chain(A)
    chain = c.take(2)
    v = Verifier()
    assert kinds(v, [chain[0].message, chain[1].message, c.alternative(1).message]) == [
        "valid",
        "valid",
        "equivocation",
    ]
    assert v.evidence == [] and v.evidence_dropped == 1


def test_a_bounded_verifier_forgets_the_chain_touched_least_recently() -> None:
    c_ident = mb.identity(mb.SEED_C)
    ca, cb, cc = mb.Chain(A).take(3), mb.Chain(B).take(2), mb.Chain(c_ident).take(1)
    v = Verifier(max_chains=2)
    assert kinds(v, [ca[0].message, cb[0].message, ca[1].message, cc[0].message]) == ["valid"] * 4
    assert v.chains_forgotten == 1 and set(v.verified_records()) == {A.did, c_ident.did}
    # B comes back: a new chain from what it sends now; A, touched before C, makes room.
    assert v.check(cb[1].message).detail == "starts the chain at seq 1"
    assert set(v.verified_records()) == {B.did, c_ident.did}


WINDOWED = mb.Chain(A)
WINDOWED_CHAIN = WINDOWED.take(14)


def test_a_windowed_verifier_keeps_the_last_seqs_of_a_chain() -> None:
    """Live, a chain keeps the links of its last `window` seqs: within them every verdict is as
    before; a batch of an older seq cannot be judged against links it no longer has, and is
    called a replay, saying so. The records of forgotten links are still counted."""
    chain = WINDOWED_CHAIN
    v = Verifier(window=4)
    assert kinds(v, [b.message for b in chain[:12]]) == ["valid"] * 12
    assert len(v._chains[A.did].links) == 4  # seqs 8-11
    assert v.verified_records() == {A.did: 36} and v.missing(A.did) == []
    assert v.check(chain[11].message).kind == "duplicate"
    assert v.check(WINDOWED.alternative(9).message).kind == "equivocation"
    old = v.check(chain[3].message)
    assert old.kind == "replay" and old.forged
    assert (
        old.detail
        == "too old to judge: seq 3 is before the last 4 seqs kept of the chain (up to 11)"
    )
    assert v.check(WINDOWED.alternative(2).message).detail.startswith("too old to judge: seq 2 ")
    # A batch that arrives late but inside the window is still reordered, not too old.
    assert kinds(v, [chain[13].message, chain[12].message]) == ["gap", "reordered"]
    assert v.verified_records() == {A.did: 42} and len(v._chains[A.did].links) == 4


@settings(max_examples=60, deadline=None)
@given(st.permutations(range(14)))
def test_a_windowed_chain_stays_bounded_in_any_order(order: list[int]) -> None:
    """Honest batches in any order: each is accepted or too old to judge, never anything else,
    and the links kept never pass twice the window (late ones are dropped in a rebuild)."""
    v = Verifier(window=3)
    accepted = set()
    for i in order:
        f = v.check(WINDOWED_CHAIN[i].message)
        if f.kind == "replay":
            assert f.detail.startswith("too old to judge"), f.detail
        else:
            assert not f.forged, format_finding(f)
            accepted.add(i)
        assert len(v._chains[A.did].links) <= 6
    assert v.verified_records() == {A.did: 3 * len(accepted)}


def test_a_windowed_verifier_keeps_the_newest_gaps() -> None:
    """A signer can make a gap with every batch (seq 0, 2, 4...): a windowed verifier keeps the
    newest GAPS_KEPT and counts the others."""
    v = Verifier(window=4)
    for seq in range(0, 2 * (2 * GAPS_KEPT + 2), 2):
        prev = ZERO if seq == 0 else bytes([seq % 251 + 1]) * 32
        assert v.check(mb.sign(A, mb.batch_payload(A, seq, prev))).kind in ("valid", "gap")
    assert len(v.gaps) <= 2 * GAPS_KEPT and v.gaps[-1][1:] == (4 * GAPS_KEPT + 1,) * 2
    assert len(v.gaps) + v.gaps_dropped == 2 * GAPS_KEPT + 1


def test_the_live_tally_does_not_grow_with_the_messages() -> None:
    """What live verify keeps for its summary is the count of each kind: 200,000 findings,
    each with its own source and detail, cost what 1,000 do."""

    def finding(i: int) -> Finding:
        kind = ("valid", "duplicate", "malformed", "bad-signature")[i % 4]
        return Finding(kind, A.did, i, bytes(32), 3, f"detail {i}", f"depin/v1/x{i}/batch")

    tally = Tally()
    tracemalloc.start()
    try:
        for i in range(1000):
            tally.add(finding(i))
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1000, 200_000):
            tally.add(finding(i))
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 4096, f"{grown} bytes for 199,000 more findings"
    assert tally.counts == {"valid": 50_000, "duplicate": 50_000, "malformed": 50_000,
                            "bad-signature": 50_000}  # fmt: skip
    assert summary(tally) == (
        "200000 messages: 50000 valid, 50000 duplicate, 50000 bad-signature, 50000 malformed; "
        "100000 invalid"
    )
    assert exit_code(tally) == 1 and exit_code(Tally([finding(0), finding(1)])) == 0


def test_devices_have_separate_chains() -> None:
    ca, cb = mb.Chain(A).take(2), mb.Chain(B).take(2)
    v = Verifier()
    assert kinds(v, [ca[0].message, cb[0].message, cb[1].message, ca[1].message]) == ["valid"] * 4
    assert v.verified_records() == {A.did: 6, B.did: 6}


@given(st.permutations(range(6)), st.lists(st.integers(0, 5), max_size=4))
def test_honest_batches_in_any_order_are_never_forgeries(
    order: list[int], repeats: list[int]
) -> None:
    chain = honest(6)
    v = Verifier()
    found = [v.check(chain[i].message) for i in [*order, *repeats]]
    assert not any(f.forged for f in found), [format_finding(f) for f in found]
    assert v.missing(A.did) == [] and v.status(A.did) == "ok"
    assert v.verified_records() == {A.did: 18}


# --- birth and attestation ------------------------------------------------------------------------


def test_birth_message() -> None:
    f = Verifier().check(mb.sign(A, mb.birth_payload(A, next_seq=7), cose.TYP_BIRTH))
    assert (f.kind, f.forged, f.did) == ("birth", False, A.did)
    assert "next seq 7" in f.detail
    wrong = mb.sign(A, mb.birth_payload(A, did=B.did), cose.TYP_BIRTH)
    assert Verifier().check(wrong).kind == "did-mismatch"
    extra = dcbor.dumps({**cbor2.loads(mb.birth_payload(A)), 9: 1})
    assert Verifier().check(mb.sign(A, extra, cose.TYP_BIRTH)).kind == "malformed"


def test_birth_does_not_touch_the_chain() -> None:
    v = Verifier()
    v.check(mb.sign(A, mb.birth_payload(A), cose.TYP_BIRTH))
    assert v.check(honest(3)[2].message).detail == "starts the chain at seq 2"


def test_attestation_message() -> None:
    msg = mb.sign(B, mb.attestation_payload(B, A), cose.TYP_ATTESTATION)
    f = Verifier(allowed_dids=[A.did]).check(msg)  # attestors are not devices
    assert (f.kind, f.forged, f.did) == ("attestation", False, B.did)
    forged = mb.sign(A, mb.attestation_payload(B, A), cose.TYP_ATTESTATION)
    assert Verifier().check(forged).kind == "did-mismatch"


# --- never raising --------------------------------------------------------------------------------


def test_garbage_truncated_and_oversized() -> None:
    m = honest(1)[0].message
    v = Verifier()
    for bad in (b"", b"\x00", b"\xff" * 100, m[:1], m[: len(m) // 2], m[:-1], b"\x81" * 200_000):
        f = v.check(bad)
        assert f.kind == "malformed" and f.forged
    start = time.monotonic()
    f = v.check(m + bytes(MAX_MESSAGE))
    assert f.kind == "malformed" and "over the 4194304 byte cap for batch" in f.detail
    assert time.monotonic() - start < 1


@pytest.mark.parametrize(
    "bomb",
    [
        b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff",  # array of 2^64-1 items
        b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff",  # 2^64-1 byte string
        b"\xbb\x7f\xff\xff\xff\xff\xff\xff\xff",  # huge map
        b"\xd2\x84" + b"\x9f" * 100_000,  # endless indefinite nesting
        b"\xd2" * 100_000 + b"\x00",  # tags on tags
    ],
)
def test_decoder_bombs(bomb: bytes) -> None:
    start = time.monotonic()
    assert Verifier().check(bomb).kind == "malformed"
    assert time.monotonic() - start < 2
    assert Verifier().check(mb.sign(A, bomb)).kind == "malformed"


def test_check_never_lets_an_exception_out(monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(_: bytes, **__: object) -> payloads.Batch:
        raise RuntimeError("a bug")

    monkeypatch.setattr(payloads, "decode_batch", boom)
    f = Verifier().check(honest(1)[0].message)
    assert f.kind == "malformed" and "RuntimeError" in f.detail


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_random_bytes_are_never_valid(data: bytes) -> None:
    f = Verifier().check(data)
    assert isinstance(f, Finding) and f.forged


VALID = honest(2)


@settings(max_examples=400)
@given(
    st.sampled_from(VALID),
    st.lists(st.integers(0, 10_000), min_size=1, max_size=4),
    st.integers(0, 10_000),
    st.sampled_from(["flip", "truncate", "delete", "insert"]),
)
def test_mutated_messages_are_never_valid(
    built: mb.Built, flips: list[int], cut: int, how: str
) -> None:
    m = bytearray(built.message)
    if how == "flip":
        for bit in flips:
            i = bit % (len(m) * 8)
            m[i // 8] ^= 1 << (i % 8)
    elif how == "truncate":
        m = m[: cut % len(m)]
    elif how == "delete":
        del m[cut % len(m)]
    else:
        m.insert(cut % (len(m) + 1), flips[0] % 256)
    v = Verifier()
    v.check(VALID[0].message)  # the chain exists: a mutant could only be new, not a duplicate
    f = v.check(bytes(m))
    if bytes(m) == built.message:
        assert f.kind in ("valid", "duplicate")
    else:
        assert f.kind not in ("valid", "duplicate", "gap", "reordered"), format_finding(f)


# --- reporting ------------------------------------------------------------------------------------


def test_format_summary_exit_code() -> None:
    chain = honest(2)
    v = Verifier()
    ok = v.check(chain[0].message, source="spool/0.cbor")
    assert format_finding(ok) == (
        f"spool/0.cbor: valid device={A.device_id} seq=0 records=3 starts the chain at seq 0"
    )
    bad = v.check(b"junk")
    assert format_finding(bad).startswith("-: malformed device=- seq=- records=0 ")
    dup = v.check(chain[0].message)
    assert summary([ok, bad, dup]) == "3 messages: 1 valid, 1 duplicate, 1 malformed; 1 invalid"
    assert summary([]) == "0 messages: nothing; 0 invalid"
    assert exit_code([ok, dup]) == 0 and exit_code([ok, bad]) == 1
    assert v.counts == {"valid": 1, "malformed": 1, "duplicate": 1}


# --- files ----------------------------------------------------------------------------------------


def test_verify_paths(tmp_path: Path) -> None:
    chain = honest(4)
    d = tmp_path / "capture"
    (d / "later").mkdir(parents=True)
    (d / "a-000.cbor").write_bytes(chain[0].message)
    (d / "a-001.cbor").write_bytes(chain[1].message)
    (d / "later" / "b-003.cbor").write_bytes(chain[3].message)
    (d / "later" / "c-002.cbor").write_bytes(chain[2].message)
    (d / ".hidden").write_bytes(b"editor junk")
    (d / "z-forged.cbor").write_bytes(chain[0].message[:-1] + bytes([chain[0].message[-1] ^ 1]))
    single = tmp_path / "one.cbor"
    single.write_bytes(chain[1].message)
    v = Verifier()
    found = verify_paths([d, single], v)
    assert [(Path(f.source).name, f.kind) for f in found] == [
        ("a-000.cbor", "valid"),
        ("a-001.cbor", "valid"),
        ("b-003.cbor", "gap"),
        ("c-002.cbor", "reordered"),
        ("z-forged.cbor", "bad-signature"),
        ("one.cbor", "duplicate"),
    ]
    assert exit_code(found) == 1
    with pytest.raises(PathNotFoundError) as e:
        verify_paths([single, tmp_path / "missing"], Verifier())
    assert isinstance(e.value, FileNotFoundError) and e.value.exit_code == 2


def test_verify_paths_oversized_file(tmp_path: Path) -> None:
    big = tmp_path / "big.cbor"
    with big.open("wb") as f:
        f.truncate(MAX_MESSAGE + 5)
    (found,) = verify_paths([big], Verifier())
    assert found.kind == "malformed" and found.source == str(big)


def test_vector_directory_verifies(tmp_path: Path) -> None:
    """The spec vectors directory as a capture: every forged vector is flagged."""
    found = verify_paths([Path(__file__).parents[1] / "vectors" / "cose"], Verifier())
    assert len(found) == len(mb.cose_vectors())
    assert exit_code(found) == 1


# --- a live broker --------------------------------------------------------------------------------


async def _publish(broker: Mosquitto, items: list[tuple[str, bytes, bool]]) -> None:
    async with aiomqtt.Client("127.0.0.1", broker.port) as client:
        for topic, payload, retain in items:
            await client.publish(topic, payload, qos=1, retain=retain)


def test_verify_live(mosquitto: Mosquitto) -> None:
    prefix = f"test/{time.monotonic_ns()}"
    chain = honest(3)
    birth = mb.sign(A, mb.birth_payload(A, next_seq=0), cose.TYP_BIRTH)
    a, b = f"{prefix}/{A.device_id}", f"{prefix}/{B.device_id}"
    seen: list[Finding] = []

    async def run() -> Tally:
        await _publish(mosquitto, [(f"{a}/birth", birth, True)])  # retained: arrives on subscribe
        task = asyncio.create_task(
            verify_live(mosquitto.url, seconds=2, prefix=prefix, verifier=Verifier(),
                        on_finding=seen.append)
        )  # fmt: skip
        await asyncio.sleep(0.7)
        items = [(f"{a}/batch", x.message, False) for x in chain]
        items.append(
            (f"{a}/batch", chain[0].message[:-1] + bytes([chain[0].message[-1] ^ 1]), False)
        )
        items.append((f"{b}/batch", chain[2].message, False))  # republished under B's name
        items.append((f"{a}/state", b'{"not": "checked"}', False))
        await _publish(mosquitto, items)
        return await task

    tally, found = asyncio.run(run()), seen
    assert [f.kind for f in found] == ["birth", "valid", "valid", "valid", "bad-signature",
                                       "duplicate"]  # fmt: skip
    assert tally.counts == Tally(found).counts
    assert found[1].source == f"{a}/batch"
    assert f"published under device {B.device_id}" in found[-1].detail
    assert exit_code(tally) == 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_verify_live_falls_back_to_mqtt_311() -> None:
    """amqtt's broker speaks only MQTT 3.1.1 and refuses a v5 CONNECT."""
    chain = honest(2)

    async def run() -> Tally:
        async with amqtt_broker() as port:
            task = asyncio.create_task(
                verify_live(
                    f"mqtt://127.0.0.1:{port}", seconds=2.5, prefix="p", verifier=Verifier()
                )
            )
            await asyncio.sleep(1.2)
            v311 = aiomqtt.ProtocolVersion.V311
            async with aiomqtt.Client("127.0.0.1", port, protocol=v311) as client:
                for b in chain:
                    await client.publish(f"p/{A.device_id}/batch", b.message, qos=1)
            return await task

    assert asyncio.run(run()).counts == {"valid": 2}


def test_verify_live_without_a_broker() -> None:
    port = free_port()
    with pytest.raises(UplinkError):
        asyncio.run(verify_live(f"mqtt://127.0.0.1:{port}", seconds=1, verifier=Verifier()))


def test_permutations_of_small_chain_exhaustively() -> None:
    chain = honest(4)
    for order in itertools.permutations(range(4)):
        v = Verifier()
        found = [v.check(chain[i].message) for i in order]
        assert not any(f.forged for f in found), order
