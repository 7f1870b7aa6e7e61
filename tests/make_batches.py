"""Valid and adversarial signed batches for the verifier's tests and the spec vectors.

Everything is deterministic: keys come from fixed seeds, Ed25519 signatures are deterministic,
so the same call always gives the same bytes. Honest batches go through the production
encoders (payloads.encode_record / encode_batch, cose.sign1); adversarial ones are assembled
field by field so a test can put any raw bytes in any place and still sign them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.wire import cose, dcbor, merkle, payloads
from gateway.wire.identity import Identity, did_of

SEED_A = bytes(range(32))
SEED_B = bytes(range(32, 64))
BOOT = bytes(range(16))
SEALED = 1_767_225_600  # 2026-01-01T00:00:00Z
MODULES: list[tuple[str, str, bytes]] = [("ranges", "1.0", hashlib.sha256(b"ranges").digest())]
# The identity point: a small-order public key under which OpenSSL accepts the "signature"
# R = identity, S = 0 for every message. Verifiers must reject it (spec section 2).
WEAK_KEY = bytes([1]) + bytes(31)
WEAK_SIGNATURE = bytes([1]) + bytes(63)


def identity(seed: bytes = SEED_A) -> Identity:
    return Identity.from_private_key(Ed25519PrivateKey.from_private_bytes(seed))


def batch_id(payload: bytes) -> bytes:
    return hashlib.sha256(payload).digest()


def record(i: int, *, t0: float = SEALED - 60) -> bytes:
    """Record i of a batch: alternating temperature and humidity, a value with a fraction."""
    if i % 2:
        return payloads.encode_record("climate/humidity", "%RH", 40.5 + i, t0 + i, 0.0, [])
    return payloads.encode_record("climate/temperature", "Cel", 21.25 + i, t0 + i, 0.125, [])


def records(n: int = 3) -> list[bytes]:
    return [record(i) for i in range(n)]


def batch_payload(
    ident: Identity,
    seq: int,
    prev: bytes,
    recs: Sequence[bytes] | None = None,
    *,
    did: str | None = None,
    dropped: Sequence[payloads.DropReceipt] = (),
    synced: bool = True,
) -> bytes:
    payload, _ = payloads.encode_batch(
        did=did or ident.did,
        seq=seq,
        prev=prev,
        sealed=SEALED + 60 * seq,
        records=records() if recs is None else recs,
        clock_synced=synced,
        clock_source="ntp",
        modules=MODULES,
        dropped=dropped,
        boot=BOOT,
    )
    return payload


def sign(ident: Identity, payload: bytes, typ: str = cose.TYP_BATCH) -> bytes:
    return cose.sign1(ident, typ, payload)


@dataclass
class Built:
    seq: int
    payload: bytes
    message: bytes

    @property
    def id(self) -> bytes:
        return batch_id(self.payload)


@dataclass
class Chain:
    """An honest device: each batch links to the one before."""

    ident: Identity = field(default_factory=identity)
    built: list[Built] = field(default_factory=list)

    def next(self, recs: Sequence[bytes] | None = None) -> Built:
        seq = len(self.built)
        prev = self.built[-1].id if self.built else payloads.ZERO_PREV
        payload = batch_payload(self.ident, seq, prev, recs)
        b = Built(seq, payload, sign(self.ident, payload))
        self.built.append(b)
        return b

    def take(self, n: int) -> list[Built]:
        while len(self.built) < n:
            self.next()
        return self.built[:n]

    def alternative(self, seq: int, recs: Sequence[bytes] | None = None) -> Built:
        """A second, different batch for an already used seq (same prev): equivocation."""
        prev = self.built[seq - 1].id if seq else payloads.ZERO_PREV
        other = list(recs) if recs is not None else [*records(), record(99)]
        payload = batch_payload(self.ident, seq, prev, other)
        return Built(seq, payload, sign(self.ident, payload))


# --- hand-assembled payloads and envelopes -----------------------------------------------------


def head(major: int, n: int) -> bytes:
    return payloads._head(major, n)


def canonical_fields(
    ident: Identity, seq: int, prev: bytes, recs: Sequence[bytes] | None = None
) -> dict[int, bytes]:
    """The raw encoded value of each batch key, as the honest encoder would write it."""
    recs = records() if recs is None else list(recs)
    enc = dcbor.dumps
    return {
        1: enc(ident.did),
        2: enc(seq),
        3: enc(prev),
        4: enc(SEALED + 60 * seq),
        5: head(4, len(recs)) + b"".join(recs),
        6: enc(merkle.root(recs)),
        7: enc({"synced": True, "source": "ntp"}),
        8: enc([list(m) for m in MODULES]),
        10: enc(BOOT),
    }


def assemble(fields: Mapping[Any, bytes], *, key_bytes: Mapping[Any, bytes] | None = None) -> bytes:
    """A map from raw parts, in the dict's order (so a test can also misorder keys)."""
    key_bytes = key_bytes or {}
    body = b"".join(key_bytes.get(k, cbor2.dumps(k)) + v for k, v in fields.items())
    return head(5, len(fields)) + body


def raw_record(obj: dict[Any, Any]) -> bytes:
    """A record encoded without normalisation, keys in the given order (may be non-canonical)."""
    return cbor2.dumps(obj)


def sign_raw(
    ident: Identity,
    payload: bytes,
    *,
    protected: bytes | None = None,
    unprotected: bytes = b"\xa0",
    typ: str = cose.TYP_BATCH,
) -> bytes:
    """A COSE_Sign1 around any protected header and unprotected bytes, correctly signed."""
    if protected is None:
        protected = cose.protected_header(ident.kid, typ)
    signature = ident.sign(cose.sig_structure(protected, payload))
    return (
        b"\xd2\x84"
        + cbor2.dumps(protected)
        + unprotected
        + cbor2.dumps(payload)
        + cbor2.dumps(signature)
    )


def weak_key_forgery(payload_did: str | None = None) -> bytes:
    """A batch 'signed' under the identity point with R = identity, S = 0 (no private key)."""
    kid = b"\xed\x01" + WEAK_KEY
    did = payload_did or did_of(WEAK_KEY)
    recs = records()
    payload, _ = payloads.encode_batch(
        did=did, seq=0, prev=payloads.ZERO_PREV, sealed=SEALED, records=recs,
        clock_synced=True, clock_source="ntp", modules=MODULES, dropped=(), boot=BOOT,
    )  # fmt: skip
    protected = cose.protected_header(kid, cose.TYP_BATCH)
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, WEAK_SIGNATURE]))


def birth_payload(ident: Identity, *, next_seq: int = 0, did: str | None = None) -> bytes:
    return payloads.encode_birth(
        did=did or ident.did,
        version="0.1.0",
        boot=BOOT,
        started=SEALED,
        config_sha256=hashlib.sha256(b"config").digest(),
        sensors=[{"id": "climate", "driver": "simulated", "quantities": ["temperature"],
                  "interval": 10}],
        modules=MODULES,
        next_seq=next_seq,
    )  # fmt: skip


def attestation_payload(attestor: Identity, device: Identity) -> bytes:
    return dcbor.dumps(
        {
            1: attestor.did,
            2: device.did,
            3: SEALED,
            4: SEALED + 3600,
            5: 360,
            6: 355,
            7: 2,
            8: "ok",
            9: 0.5,
            10: merkle.root([]),
        }
    )


# --- the spec vectors of tests/vectors/cose/ ---------------------------------------------------


@dataclass
class Vector:
    name: str
    message: bytes
    expect: str  # the finding kind of a fresh verifier without allow-list
    description: str


def _record_raw(value_bytes: bytes, *, extra: bytes = b"", count: int = 4) -> bytes:
    """A temperature record with the value's bytes given raw (keys 0, 1, 2, 6 in order)."""
    enc = dcbor.dumps
    return (
        head(5, count)
        + b"\x00" + enc("climate/temperature")
        + b"\x01" + enc("Cel")
        + b"\x02" + value_bytes
        + b"\x06" + enc(SEALED - 60)
        + extra
    )  # fmt: skip


def chain_vectors() -> tuple[Chain, dict[str, Built]]:
    chain = Chain(identity(SEED_A))
    chain.take(5)
    named = {f"chain-{b.seq}": b for b in chain.built}
    named["chain-1-other"] = chain.alternative(1)
    named["chain-2-other"] = chain.alternative(2)
    wrong = batch_payload(chain.ident, 1, b"\x22" * 32)
    named["chain-1-wrong-prev"] = Built(1, wrong, sign(chain.ident, wrong))
    return chain, named


def cose_vectors() -> list[Vector]:
    """Every file of tests/vectors/cose/, rebuilt from scratch (the bytes are reproducible)."""
    a, b = identity(SEED_A), identity(SEED_B)
    named = chain_vectors()[1]
    c0 = named["chain-0"]
    zero = payloads.ZERO_PREV
    out = [Vector(n, x.message, "valid", "honest chain of device A") for n, x in named.items()]

    def add(name: str, message: bytes, expect: str, description: str) -> None:
        out.append(Vector(name, message, expect, description))

    def batch(recs: Sequence[bytes]) -> bytes:
        return sign(a, batch_payload(a, 0, zero, recs))

    add("birth", sign(a, birth_payload(a), cose.TYP_BIRTH), "birth", "birth of device A")
    attestation = sign(b, attestation_payload(b, a), cose.TYP_ATTESTATION)
    add("attestation", attestation, "attestation", "attestor B about device A")
    p19 = dcbor.dumps({1: cose.ALG_ED25519, 4: a.kid, 16: cose.TYP_BATCH})
    add("alg-19", sign_raw(a, c0.payload, protected=p19), "valid", "chain-0 signed with alg -19")

    flipped = c0.message[:-1] + bytes([c0.message[-1] ^ 0x01])
    add("bad-signature", flipped, "bad-signature", "chain-0, last signature bit flipped")
    env = cbor2.loads(c0.message).value
    assert c0.payload.count(bytes.fromhex("f94d50")) == 1  # 21.25, the first record's value
    tampered = c0.payload.replace(bytes.fromhex("f94d50"), bytes.fromhex("f94d60"))  # 21.5
    tampered_msg = cbor2.dumps(cbor2.CBORTag(18, [env[0], {}, tampered, env[3]]))
    add("tampered-record", tampered_msg, "bad-signature", "record 0 changed after signing")
    add("weak-key", weak_key_forgery(), "bad-signature", "identity-point key, R=identity S=0")
    mismatch = sign(a, batch_payload(a, 0, zero, did=b.did))
    add("did-mismatch", mismatch, "did-mismatch", "signed by A, payload names B")

    f = canonical_fields(a, 0, zero)
    f[6] = dcbor.dumps(merkle.root(records()[:2]))
    add("bad-root", sign(a, assemble(f)), "bad-root", "root over records 0-1 of 3")
    nd = raw_record({0: "climate/temperature", 1: "Cel", 2: 21.0, 6: SEALED - 60})
    add("integral-float", batch([nd, record(1)]), "non-deterministic", "value 21.0 as a double")
    unsorted = raw_record({"as": 0, 6: SEALED - 60, 2: 21, 1: "Cel", 0: "climate/temperature"})
    add("unsorted-keys", batch([unsorted]), "non-deterministic", "record labels in reverse")
    f = canonical_fields(a, 0, zero)
    f[2] = b"\x18\x00"
    add("non-shortest-head", sign(a, assemble(f)), "non-deterministic", "seq 0 written 18 00")
    add("nan", batch([_record_raw(bytes.fromhex("f97e00"))]), "nan", "record value NaN")
    add("infinity", batch([_record_raw(bytes.fromhex("f97c00"))]), "nan", "record value +inf")
    base = dcbor.dumps({-2: "climate/", 0: "temperature", 1: "Cel", 2: 21, 6: SEALED - 60})
    add("base-fields", batch([base]), "base-fields", "record uses the base name label -2")
    bignum = dcbor.dumps({0: "climate/temperature", 1: "Cel", 2: 21, 6: 2**64 + 5})
    add("tag-in-payload", batch([bignum]), "malformed", "record time is a tag-2 bignum")
    no_time = dcbor.dumps({0: "climate/temperature", 1: "Cel", 2: 21})
    add("no-record-time", batch([no_time]), "bad-record", "record without t")
    f = canonical_fields(a, 0, zero)
    f[11] = b"\x00"
    add("unknown-batch-key", sign(a, assemble(f)), "malformed", "batch key 11")
    f = canonical_fields(a, 0, zero)
    f[True] = f.pop(1)  # after key 10, where f5 sorts: only the key's type is wrong
    add("bool-key", sign(a, assemble(f)), "malformed", "batch key true instead of 1")
    seq1_zero = sign(a, batch_payload(a, 1, zero))
    add("seq1-zero-prev", seq1_zero, "prev-mismatch", "seq 1 with the all-zero prev")
    seq0_prev = sign(a, batch_payload(a, 0, b"\x11" * 32))
    add("seq0-nonzero-prev", seq0_prev, "prev-mismatch", "seq 0 with a non-zero prev")
    ptyp = dcbor.dumps({1: cose.ALG_EDDSA, 4: a.kid, 16: "application/json"})
    add("unknown-typ", sign_raw(a, c0.payload, protected=ptyp), "malformed", "typ application/json")
    unprot = sign_raw(a, c0.payload, unprotected=cbor2.dumps({4: a.kid}))
    add("unprotected-not-empty", unprot, "malformed", "kid in the unprotected map")
    add("trailing-bytes", c0.message + b"\x00", "malformed", "chain-0 and one more byte")
    add("truncated", c0.message[:-10], "malformed", "chain-0 without its last 10 bytes")
    add("untagged", c0.message[1:], "malformed", "chain-0 without tag 18")
    add("garbage", b"not cbor at all \xff\xfe", "malformed", "not CBOR")
    return out


# Orders in which one verifier sees chain files, and what it must say each time.
SEQUENCES: list[dict[str, Any]] = [
    {
        "files": ["chain-0", "chain-1", "chain-1", "chain-1-other", "chain-3", "chain-2",
                  "chain-4", "alg-19"],
        "expect": ["valid", "valid", "duplicate", "equivocation", "gap", "reordered", "valid",
                   "duplicate"],
    },
    {"files": ["chain-0", "chain-1", "chain-3", "chain-2-other"],
     "expect": ["valid", "valid", "gap", "replay"]},
    {"files": ["chain-0", "chain-1-wrong-prev", "chain-1"],
     "expect": ["valid", "prev-mismatch", "valid"]},
    {"files": ["chain-2", "chain-3", "chain-1", "chain-0"],
     "expect": ["valid", "valid", "reordered", "reordered"]},
    {"allow": ["B"], "files": ["chain-0", "birth", "attestation"],
     "expect": ["unknown-device", "unknown-device", "attestation"]},
]  # fmt: skip


# --- more adversarial messages (the attestor's adversarial tests) ------------------------------

SEED_C = bytes(range(64, 96))
VALUE_2125 = bytes.fromhex("f94d50")  # 21.25, the value of record 0 of `records()`
VALUE_2150 = bytes.fromhex("f94d60")  # 21.5: one byte of that value changed


def tampered_payload(payload: bytes) -> bytes:
    """`payload` with one byte of record 0's value changed (21.25 -> 21.5); root unchanged."""
    assert payload.count(VALUE_2125) == 1, "record 0 of records() expected once"
    return payload.replace(VALUE_2125, VALUE_2150)


def tampered_unsigned(built: Built) -> bytes:
    """`built` with one byte of a record value changed after signing (signature kept)."""
    env = cbor2.loads(built.message).value
    return cbor2.dumps(cbor2.CBORTag(18, [env[0], {}, tampered_payload(built.payload), env[3]]))


def batch_at(
    ident: Identity,
    seq: int,
    prev: bytes,
    *,
    sealed: float = SEALED,
    recs: Sequence[bytes] | None = None,
) -> bytes:
    """A correctly signed, deterministic batch with any seq and sealed time (which the honest
    builder derives from seq)."""
    f = canonical_fields(ident, seq, prev, recs)
    f[4] = dcbor.dumps(sealed)
    return sign(ident, assemble(f))


def birth_with_sensors(
    ident: Identity, sensors: Any, *, boot: bytes = BOOT, started: float = SEALED
) -> bytes:
    """A signed, deterministic birth whose sensor list (key 6) is anything CBOR can hold."""
    payload = dcbor.dumps(
        {
            1: ident.did,
            2: "0.1.0",
            3: boot,
            4: started,
            5: hashlib.sha256(b"config").digest(),
            6: sensors,
            7: [list(m) for m in MODULES],
            8: 0,
        }
    )
    return sign(ident, payload, cose.TYP_BIRTH)


def model_bundle_message(ident: Identity) -> bytes:
    """A signed model bundle (typ model, spec of gateway/models/bundle.py), no files needed."""
    model = b"TFL3 not really a model"
    manifest = b'{"name": "anomaly", "version": "1.0"}'
    payload = dcbor.dumps(
        {1: "anomaly", 2: "1.0", 3: manifest, 4: model, 5: hashlib.sha256(model).digest(),
         6: SEALED, 7: "active"}
    )  # fmt: skip
    return sign(ident, payload, cose.TYP_MODEL)
