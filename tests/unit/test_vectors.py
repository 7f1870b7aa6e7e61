"""The project's spec vectors (tests/vectors/): our code reproduces them byte for byte, the
verifier accepts and rejects them as they say, and each is cross-checked by code that shares
nothing with the gateway's: a recursive RFC 9162 Merkle hash, a Sig_structure built byte by
byte, RFC 8949 Appendix A, the RFC 6962 reference roots and the W3C did:key test vectors.
Regenerate the COSE and Merkle files with `python tests/vectors/make_vectors.py`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import struct
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from hypothesis import given
from hypothesis import strategies as st

from gateway.wire import cose, dcbor, identity, merkle
from gateway.wire.verify import Verifier
from tests import make_batches as mb
from tests.vectors.reference import (
    CT_ROOTS,
    MERKLE_LEAVES,
    bstr,
    head,
    ref_b58,
    ref_mth,
    ref_path,
    tstr,
)

VECTORS = Path(__file__).parents[1] / "vectors"

# --- deterministic CBOR ---------------------------------------------------------------------------

CBOR = json.loads((VECTORS / "cbor.json").read_text())["vectors"]


def build(desc: dict[str, Any]) -> Any:
    ((kind, v),) = desc.items()
    if kind == "float":
        return float(v)
    if kind == "bytes":
        return bytes.fromhex(v)
    if kind == "array":
        return [build(x) for x in v]
    if kind == "map":
        return {build(k): build(x) for k, x in v}
    return v  # int, text, bool, null


def _ids(entry: dict[str, Any]) -> str:
    return json.dumps(entry["value"])[:60]


@pytest.mark.parametrize("entry", CBOR, ids=_ids)
def test_cbor_vector_encodes(entry: dict[str, Any]) -> None:
    value = build(entry["value"])
    if entry.get("error"):
        with pytest.raises(ValueError):
            dcbor.dumps(value)
        return
    assert dcbor.dumps(value).hex() == entry["hex"]
    assert dcbor.is_deterministic(bytes.fromhex(entry["hex"]))


@pytest.mark.parametrize("entry", [e for e in CBOR if not e.get("error")], ids=_ids)
def test_cbor_vector_decodes_to_its_value(entry: dict[str, Any]) -> None:
    assert cbor2.loads(bytes.fromhex(entry["hex"])) == build(entry["value"])


FLOATS = [e for e in CBOR if "float" in e["value"] and not e.get("error")]


@pytest.mark.parametrize("entry", FLOATS, ids=_ids)
def test_cbor_float_vector_is_exact_and_shortest(entry: dict[str, Any]) -> None:
    """Check each float vector by hand with struct: integral values below 2^64 are integers;
    every other value is in the narrowest IEEE width that holds it exactly."""
    x = float(entry["value"]["float"])
    raw = bytes.fromhex(entry["hex"])
    if x.is_integer() and abs(x) < 2**64:
        n = int(x)
        assert raw == (head(0, n) if n >= 0 else head(1, -1 - n))
        return
    widths = {0xF9: ">e", 0xFA: ">f", 0xFB: ">d"}
    fmt = widths[raw[0]]
    assert struct.unpack(fmt, raw[1:])[0] == x
    for narrower in list(widths.values())[: list(widths.values()).index(fmt)]:
        with contextlib.suppress(OverflowError):  # out of that width's range
            assert struct.unpack(narrower, struct.pack(narrower, x))[0] != x


# --- Merkle trees ---------------------------------------------------------------------------------

MERKLE = json.loads((VECTORS / "merkle.json").read_text())


def test_reference_merkle_matches_rfc6962_roots() -> None:
    for n, root in CT_ROOTS.items():
        assert ref_mth(MERKLE_LEAVES[:n]).hex() == root


@pytest.mark.parametrize("tree", MERKLE["trees"], ids=lambda t: f"n={t['size']}")
def test_merkle_vector(tree: dict[str, Any]) -> None:
    leaves = [bytes.fromhex(x) for x in MERKLE["leaves"]][: tree["size"]]
    assert leaves == MERKLE_LEAVES[: tree["size"]]
    root = bytes.fromhex(tree["root"])
    assert tree["root"] == CT_ROOTS[tree["size"]]
    assert merkle.root(leaves) == root
    assert len(tree["proofs"]) == len(leaves)
    for i, proof_hex in tree["proofs"].items():
        proof = [bytes.fromhex(h) for h in proof_hex]
        m = int(i)
        assert proof == ref_path(m, leaves)
        assert merkle.inclusion_proof(m, leaves) == proof
        assert merkle.verify_inclusion(leaves[m], m, len(leaves), proof, root)
        assert not merkle.verify_inclusion(leaves[m] + b"x", m, len(leaves), proof, root)
        if len(leaves) > 1:
            other = (m + 1) % len(leaves)
            assert not merkle.verify_inclusion(leaves[m], other, len(leaves), proof, root)


@given(st.lists(st.binary(max_size=40), max_size=70), st.data())
def test_merkle_matches_rfc9162_recursion(leaves: list[bytes], data: st.DataObject) -> None:
    assert merkle.root(leaves) == ref_mth(leaves)
    if leaves:
        m = data.draw(st.integers(0, len(leaves) - 1))
        proof = merkle.inclusion_proof(m, leaves)
        assert proof == ref_path(m, leaves)
        assert merkle.verify_inclusion(leaves[m], m, len(leaves), proof, ref_mth(leaves))


# --- did:key --------------------------------------------------------------------------------------

# W3C CCG did:key test vectors (ed25519-x25519.json): seeds 0, 1 and 2 as 32-byte big-endian.
W3C_DID_KEY = [
    (0, "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"),
    (1, "did:key:z6MkjchhfUsD6mmvni8mCdXHw216Xrm9bQe2mBH1P5RDjVJG"),
    (2, "did:key:z6MknGc3ocHs3zdPiJbnaaqDi58NGb4pk1Sp9WxWufuXSdxf"),
]


@pytest.mark.parametrize(("seed", "did"), W3C_DID_KEY)
def test_did_key_w3c_vectors(seed: int, did: str) -> None:
    ident = mb.identity(seed.to_bytes(32, "big"))
    assert ident.did == did
    assert len(did) == 56 and did.startswith("did:key:z6Mk")
    assert ident.device_id == did.removeprefix("did:key:") and len(ident.device_id) == 48
    assert identity.public_key_of_did(did) == ident.public_key


@given(st.binary(max_size=40))
def test_base58_matches_independent_encoder(data: bytes) -> None:
    assert identity.b58encode(data) == ref_b58(data)
    assert identity.b58decode(ref_b58(data)) == data


def test_base58_leading_zeros() -> None:
    assert identity.b58encode(b"\x00\x00\x01") == ref_b58(b"\x00\x00\x01") == "112"


# --- COSE_Sign1 -----------------------------------------------------------------------------------

COSE = json.loads((VECTORS / "cose.json").read_text())
BY_NAME = {Path(e["file"]).stem: e for e in COSE["vectors"]}


def _file(name: str) -> bytes:
    return (VECTORS / "cose" / f"{name}.cbor").read_bytes()


def test_cose_files_are_reproduced_byte_for_byte() -> None:
    built = mb.cose_vectors()
    assert {v.name for v in built} == set(BY_NAME)
    assert {p.stem for p in (VECTORS / "cose").glob("*.cbor")} == set(BY_NAME)
    for v in built:
        assert _file(v.name) == v.message, v.name
        assert BY_NAME[v.name]["expect"] == v.expect
    assert COSE["sequences"] == mb.SEQUENCES


def test_cose_identities() -> None:
    for ident in COSE["identities"].values():
        key = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(ident["seed"]))
        pub = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        assert ident["public_key"] == pub.hex()
        assert ident["kid"] == "ed01" + pub.hex()
        assert ident["did"] == "did:key:z" + ref_b58(b"\xed\x01" + pub)
        assert ident["device_id"] == ident["did"].removeprefix("did:key:")


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_cose_vector_finding(name: str) -> None:
    f = Verifier().check(_file(name), source=name)
    assert f.kind == BY_NAME[name]["expect"], f.detail
    assert f.forged == (f.kind not in ("valid", "birth", "attestation"))


@pytest.mark.parametrize("seq", mb.SEQUENCES, ids=lambda s: "-".join(s["files"]))
def test_cose_sequence(seq: dict[str, Any]) -> None:
    allow = [COSE["identities"][x]["did"] for x in seq.get("allow", [])] or None
    v = Verifier(allowed_dids=allow)
    kinds = [v.check(_file(n), source=n).kind for n in seq["files"]]
    assert kinds == seq["expect"]


SIGNED = [n for n, e in BY_NAME.items() if "signature" in e]


@pytest.mark.parametrize("name", SIGNED)
def test_cose_signature_checked_independently(name: str) -> None:
    """Rebuild protected header, envelope and Sig_structure byte by byte; verify with the raw
    Ed25519 key from the seed, no gateway code involved."""
    e = BY_NAME[name]
    signer = COSE["identities"]["B" if name == "attestation" else "A"]
    pub = bytes.fromhex(signer["public_key"])
    protected, payload = bytes.fromhex(e["protected"]), bytes.fromhex(e["payload"])
    signature = bytes.fromhex(e["signature"])
    typ = {
        "birth": "application/vnd.depin.birth+cbor",
        "attestation": "application/vnd.depin.attestation+cbor",
    }.get(name, "application/vnd.depin.batch+cbor")
    alg = b"\x32" if name == "alg-19" else b"\x27"  # -19, -8
    assert protected == b"\xa3\x01" + alg + b"\x04" + bstr(b"\xed\x01" + pub) + b"\x10" + tstr(typ)
    assert _file(name) == b"\xd2\x84" + bstr(protected) + b"\xa0" + bstr(payload) + bstr(signature)
    tbs = b"\x84" + tstr("Signature1") + bstr(protected) + b"\x40" + bstr(payload)
    assert cose.sig_structure(protected, payload) == tbs
    Ed25519PublicKey.from_public_bytes(pub).verify(signature, tbs)
    with pytest.raises(InvalidSignature):
        Ed25519PublicKey.from_public_bytes(pub).verify(signature, tbs + b"\x00")
    assert e["batch_id"] == hashlib.sha256(payload).hexdigest()
    assert cbor2.loads(payload)[1] == signer["did"]


def test_weak_key_vector_fools_a_naive_verifier() -> None:
    """Why spec section 2 bans small-order keys: OpenSSL accepts this forgery, we must not."""
    protected, _, payload, signature = cbor2.loads(_file("weak-key")).value
    kid = cbor2.loads(protected)[4]
    tbs = b"\x84" + tstr("Signature1") + bstr(protected) + b"\x40" + bstr(payload)
    Ed25519PublicKey.from_public_bytes(kid[2:]).verify(signature, tbs)  # accepted!
    assert Verifier().check(_file("weak-key")).kind == "bad-signature"


# libsodium's blocklist: the small-order points and non-canonical encodings of them.
SMALL_ORDER = [
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "0100000000000000000000000000000000000000000000000000000000000000",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
]


@pytest.mark.parametrize("key", SMALL_ORDER)
def test_small_order_keys_are_weak(key: str) -> None:
    assert cose.is_weak_public_key(bytes.fromhex(key))


@given(st.binary(min_size=32, max_size=32))
def test_real_keys_are_not_weak(seed: bytes) -> None:
    assert not cose.is_weak_public_key(mb.identity(seed).public_key)


def test_float_vectors_are_not_nan() -> None:
    assert all(math.isfinite(float(e["value"]["float"])) for e in FLOATS)
