"""COSE_Sign1 with EdDSA/Ed25519 (RFC 9052 section 4.2, spec section 2).

Signing builds the exact protected header the spec allows; verification parses strictly and
checks the signature over the transported bytes, never over a re-encoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import cbor2
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.core.errors import VerifyError
from gateway.wire import dcbor, strict
from gateway.wire.identity import MULTICODEC_ED25519, Identity

COSE_SIGN1_TAG = 18
ALG_EDDSA = -8
ALG_ED25519 = -19  # RFC 9864 fully specified Ed25519; accepted, never produced
TYP_BATCH = "application/vnd.depin.batch+cbor"
TYP_BIRTH = "application/vnd.depin.birth+cbor"
TYP_ATTESTATION = "application/vnd.depin.attestation+cbor"
TYP_MODEL = "application/vnd.depin.model+cbor"  # gateway/models/bundle.py
TYP_HEAD = "application/vnd.depin.head+cbor"  # gateway/device/head.py; only on its own topic
KNOWN_TYPS = frozenset({TYP_BATCH, TYP_BIRTH, TYP_ATTESTATION, TYP_MODEL})
CONTENT_TYPE = 'application/cose; cose-type="cose-sign1"'


def protected_header(kid: bytes, typ: str) -> bytes:
    return dcbor.dumps({1: ALG_EDDSA, 4: kid, 16: typ})


def sig_structure(protected: bytes, payload: bytes) -> bytes:
    return cbor2.dumps(["Signature1", protected, b"", payload])


def sign1(identity: Identity, typ: str, payload: bytes) -> bytes:
    protected = protected_header(identity.kid, typ)
    signature = identity.sign(sig_structure(protected, payload))
    return cbor2.dumps(cbor2.CBORTag(COSE_SIGN1_TAG, [protected, {}, payload, signature]))


@dataclass(frozen=True)
class Sign1:
    """A COSE_Sign1 whose signature has been checked."""

    kid: bytes
    typ: str
    alg: int
    protected: bytes
    payload: bytes
    signature: bytes

    @property
    def public_key(self) -> bytes:
        return self.kid[2:]


# --- small-order key rejection --------------------------------------------------------------
# Some Ed25519 implementations accept forged signatures under small-order public keys, so the
# spec makes verifiers reject them. A point has small order exactly when 8*P is the identity;
# checking that on the curve itself needs no hard-coded blocklist.
_P = 2**255 - 19
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)


def _decode_point(b: bytes) -> tuple[int, int] | None:
    y = int.from_bytes(b, "little") & ((1 << 255) - 1)
    sign = b[31] >> 7
    if y >= _P:
        return None  # non-canonical encoding
    u, v = (y * y - 1) % _P, (_D * y * y + 1) % _P
    x = u * pow(v, 3, _P) * pow(u * pow(v, 7, _P), (_P - 5) // 8, _P) % _P
    if (v * x * x - u) % _P:
        x = x * _SQRT_M1 % _P
        if (v * x * x - u) % _P:
            return None  # not on the curve
    if x == 0 and sign:
        return None
    if x & 1 != sign:
        x = _P - x
    return x, y


def _double(pt: tuple[int, int]) -> tuple[int, int]:
    x, y = pt
    xy = x * y % _P
    dxy = _D * xy * xy % _P
    x3 = 2 * xy * pow(1 + dxy, _P - 2, _P) % _P
    y3 = (y * y + x * x) * pow(1 - dxy, _P - 2, _P) % _P
    return x3, y3


@lru_cache(maxsize=4096)
def is_weak_public_key(public_key: bytes) -> bool:
    """True for keys that are not valid points, non-canonical, or of small order."""
    if len(public_key) != 32:
        return True
    pt = _decode_point(public_key)
    if pt is None:
        return True
    for _ in range(3):
        pt = _double(pt)
    return pt == (0, 1)


@lru_cache(maxsize=4096)
def _load_public(public_key: bytes) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(public_key)


def _loads_exact(data: bytes, what: str) -> Any:
    """Exactly one CBOR item, judged from its bytes before cbor2 builds anything
    (gateway/wire/strict.py): trailing bytes would let two different byte strings pass as the
    same message, and tags, indefinite or oversized lengths and deep nesting have no place."""
    try:
        return strict.loads(data)
    except strict.DecodeError as e:
        raise VerifyError("malformed", f"{what} is not strict CBOR: {e.detail}") from None


def _parse(message: bytes) -> tuple[bytes, Any, bytes, bytes]:
    # Tag 18 only around the whole message: the scan allows it anywhere it allows it, so the
    # rest is scanned with no tag at all.
    if message[:1] != b"\xd2":
        raise VerifyError("malformed", "not a tagged COSE_Sign1 (tag 18)")
    v = _loads_exact(bytes(message[1:]), "message")
    if not isinstance(v, list) or len(v) != 4:
        raise VerifyError("malformed", "COSE_Sign1 must be an array of 4")
    protected, unprotected, payload, signature = v
    if not isinstance(protected, bytes) or not isinstance(payload, bytes):
        raise VerifyError("malformed", "protected header and payload must be byte strings")
    if not isinstance(signature, bytes) or len(signature) != 64:
        raise VerifyError("malformed", "signature must be 64 bytes")
    if unprotected != {}:
        raise VerifyError("malformed", "unprotected header must be the empty map")
    return protected, unprotected, payload, signature


def typ_of(message: bytes) -> str | None:
    """The typ named in the protected header, read from the message's first bytes only (the
    tag, the array head and the header), None when they are not those of a COSE_Sign1. Not
    checked by any signature: it only chooses the byte cap a message is held to before
    anything else of it is decoded (gateway/wire/limits.py)."""
    if message[:2] != b"\xd2\x84" or len(message) < 3:
        return None
    ib = message[2]
    if ib >> 5 != 2:
        return None
    ai, pos = ib & 0x1F, 3
    if ai < 24:
        n = ai
    elif ai == 24 and len(message) > 3:
        n, pos = message[3], 4
    else:
        return None  # a header of 256 bytes or more is not one of the spec's
    try:
        hdr = strict.loads(bytes(message[pos : pos + n]))
    except strict.DecodeError:
        return None
    typ = hdr.get(16) if isinstance(hdr, dict) else None
    return typ if isinstance(typ, str) else None


def verify1(message: bytes, typs: frozenset[str] = KNOWN_TYPS) -> Sign1:
    """Parse and verify a COSE_Sign1 per spec section 9 steps 1 and 2 (signature only), of
    one of `typs`."""
    protected, _, payload, signature = _parse(message)
    hdr = _loads_exact(protected, "protected header")
    # type(k) is int: Python finds key 1 under true or 1.0, another verifier would not
    if not isinstance(hdr, dict) or set(hdr) != {1, 4, 16} or any(type(k) is not int for k in hdr):
        raise VerifyError("malformed", "protected header must hold exactly alg, kid and typ")
    alg, kid, typ = hdr[1], hdr[4], hdr[16]
    if type(alg) is not int or alg not in (ALG_EDDSA, ALG_ED25519):
        raise VerifyError("malformed", f"unsupported alg {alg!r}")
    if not isinstance(typ, str) or typ not in typs:
        raise VerifyError("malformed", f"unknown typ {typ!r}")
    if not isinstance(kid, bytes) or len(kid) != 34 or kid[:2] != MULTICODEC_ED25519:
        raise VerifyError("malformed", "kid must be 0xED01 followed by a 32-byte Ed25519 key")
    public_key = kid[2:]
    if is_weak_public_key(public_key):
        raise VerifyError("bad-signature", "weak (small-order or invalid) public key")
    try:
        _load_public(public_key).verify(signature, sig_structure(protected, payload))
    except InvalidSignature:
        raise VerifyError("bad-signature", "signature does not verify") from None
    return Sign1(
        kid=kid, typ=typ, alg=alg, protected=protected, payload=payload, signature=signature
    )
