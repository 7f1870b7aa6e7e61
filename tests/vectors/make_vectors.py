"""Write the spec vectors: python tests/vectors/make_vectors.py (from the repository root).

The COSE files come from tests/make_batches.py (deterministic: fixed seeds, Ed25519); the
Merkle roots and proofs from the independent reference code in tests/unit/test_vectors.py, not
from gateway.wire.merkle. tests/vectors/cbor.json is written by hand and not generated here.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

import cbor2  # noqa: E402

from tests import make_batches as mb  # noqa: E402
from tests.vectors.reference import MERKLE_LEAVES, ref_mth, ref_path  # noqa: E402


def cose() -> None:
    out = HERE / "cose"
    out.mkdir(exist_ok=True)
    for old in out.glob("*.cbor"):
        old.unlink()
    a, b = mb.identity(mb.SEED_A), mb.identity(mb.SEED_B)
    entries = []
    for v in mb.cose_vectors():
        (out / f"{v.name}.cbor").write_bytes(v.message)
        entry = {"file": f"cose/{v.name}.cbor", "expect": v.expect, "description": v.description}
        if v.expect in ("valid", "birth", "attestation"):
            protected, _, payload, signature = cbor2.loads(v.message).value
            entry |= {
                "protected": protected.hex(),
                "payload": payload.hex(),
                "signature": signature.hex(),
                "batch_id": hashlib.sha256(payload).hexdigest(),
            }
        entries.append(entry)
    doc = {
        "description": (
            "COSE_Sign1 messages of spec sections 2-6. 'expect' is the finding of a fresh "
            "verifier without allow-list checking the file alone; 'sequences' are files one "
            "verifier sees in order. Device A signs everything except the attestation (B). "
            "Signatures are Ed25519 (deterministic), so every byte is reproducible."
        ),
        "identities": {
            name: {
                "seed": ident_seed.hex(),
                "public_key": ident.public_key.hex(),
                "kid": ident.kid.hex(),
                "did": ident.did,
                "device_id": ident.device_id,
            }
            for name, ident_seed, ident in (("A", mb.SEED_A, a), ("B", mb.SEED_B, b))
        },
        "vectors": entries,
        "sequences": mb.SEQUENCES,
    }
    (HERE / "cose.json").write_text(json.dumps(doc, indent=1) + "\n")


def merkle() -> None:
    trees = []
    for n in (0, 1, 2, 3, 4, 5, 6, 7, 8):
        leaves = MERKLE_LEAVES[:n]
        proofs = {str(i): [h.hex() for h in ref_path(i, leaves)] for i in range(n)}
        trees.append({"size": n, "root": ref_mth(leaves).hex(), "proofs": proofs})
    doc = {
        "description": (
            "RFC 9162 section 2.1 Merkle tree hashes over the first `size` leaves. The leaves "
            "and roots are the RFC 6962 reference test data of certificate-transparency; "
            "proofs are PATH(m, D[n]) for every leaf m."
        ),
        "leaves": [x.hex() for x in MERKLE_LEAVES],
        "trees": trees,
    }
    (HERE / "merkle.json").write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    cose()
    merkle()
