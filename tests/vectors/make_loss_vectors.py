"""Write the loss receipt vectors of spec v1.1: python tests/vectors/make_loss_vectors.py.

Device A (tests/make_batches.py's seed) seals batches 0-5, then loses its spool and goes on at
seq 6, linked to batch 5, stating what it lost in key 9. Each `loss/*.cbor` is one message; each
sequence is what one verifier sees, in order, and what it must say. Deterministic (fixed seed,
Ed25519), so every byte is reproducible; tests/unit/test_loss_vectors.py checks that they are.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1]))

import cbor2  # noqa: E402

from gateway.wire.payloads import DropReceipt  # noqa: E402
from tests import make_batches as mb  # noqa: E402

SEQ6 = mb.SEALED + 60 * 6
FROM = mb.SEALED - 60  # the first reading of every batch of the chain (make_batches.records)


def _receipt(n: int, to_seq: int, why: str) -> DropReceipt:
    return DropReceipt(n, FROM, mb.SEALED + 60 * to_seq, why)


# name -> (receipts of batch 6, what the file is)
AFTER_LOSS: dict[str, tuple[list[DropReceipt], str]] = {
    "rolled-back-6": (
        [_receipt(9, 5, "spool-rolled-back seq 3-5")],
        "batch 6 after a rolled-back spool: 3-5 were sealed, then lost (9 readings)",
    ),
    "replaced-6": (
        [_receipt(6, 5, "spool-replaced seq 4-5")],
        "batch 6 on a new spool: 4-5 were not acknowledged when the old one went",
    ),
    "one-seq-6": (
        [_receipt(3, 5, "spool-rolled-back seq 5")],
        "a loss of one batch: the range is one seq, without '-last'",
    ),
    "with-spool-full-6": (
        [
            DropReceipt(40, FROM - 600, FROM - 1, "spool-full"),
            _receipt(9, 5, "spool-rolled-back seq 3-5"),
        ],
        "a v1 drop receipt and a loss receipt in one batch",
    ),
    "not-a-range-6": (
        [_receipt(9, 5, "spool-rolled-back seq 5-3")],
        "first above last: an ordinary drop receipt, not a loss statement",
    ),
}

SEQUENCES: list[dict[str, Any]] = [
    {
        "files": ["chain-0", "chain-1", "chain-2", "rolled-back-6"],
        "expect": ["valid", "valid", "valid", "gap"],
        "detail": "seq 3-5 missing: spool-rolled-back (stated by the device)",
        "stated": [[3, 5, "spool-rolled-back"]],
    },
    {
        "files": [
            "chain-0",
            "chain-1",
            "chain-2",
            "chain-3",
            "chain-4",
            "chain-5",
            "rolled-back-6",
        ],
        "expect": ["valid"] * 7,
        "detail": "extends the chain",
        "stated": [],
    },
    {
        "files": ["chain-0", "chain-1", "chain-2", "chain-3", "replaced-6"],
        "expect": ["valid", "valid", "valid", "valid", "gap"],
        "detail": "seq 4-5 missing: spool-replaced (stated by the device)",
        "stated": [[4, 5, "spool-replaced"]],
    },
    {
        "files": ["chain-0", "chain-1", "one-seq-6"],
        "expect": ["valid", "valid", "gap"],
        "detail": "seq 2-5 missing: 5 spool-rolled-back (stated by the device)",
        "stated": [[5, 5, "spool-rolled-back"]],
    },
    {
        "files": ["chain-0", "chain-1", "chain-2", "with-spool-full-6"],
        "expect": ["valid", "valid", "valid", "gap"],
        "detail": "seq 3-5 missing: spool-rolled-back (stated by the device)",
        "stated": [[3, 5, "spool-rolled-back"]],
    },
    {
        "files": ["chain-0", "chain-1", "chain-2", "not-a-range-6"],
        "expect": ["valid", "valid", "valid", "gap"],
        "detail": "seq 3-5 missing",
        "stated": [],
    },
    {
        "files": [
            "chain-0",
            "chain-2",
            "rolled-back-6",
            "chain-5",
            "chain-3",
            "chain-4",
            "chain-1",
        ],
        "expect": ["valid", "gap", "gap", "reordered", "reordered", "reordered", "reordered"],
        "detail": "links to 0 and 2",
        "stated": [[3, 5, "spool-rolled-back"]],
    },
]


def build() -> dict[str, bytes]:
    """Every file of tests/vectors/loss/ by name, rebuilt from scratch."""
    chain = mb.Chain(mb.identity(mb.SEED_A))
    out = {f"chain-{b.seq}": b.message for b in chain.take(6)}
    prev = chain.built[5].id
    for name, (receipts, _) in AFTER_LOSS.items():
        out[name] = mb.sign(chain.ident, mb.batch_payload(chain.ident, 6, prev, dropped=receipts))
    return out


def document(files: dict[str, bytes]) -> dict[str, Any]:
    vectors = []
    for name, message in files.items():
        payload = cbor2.loads(message).value[2]
        entry: dict[str, Any] = {
            "file": f"loss/{name}.cbor",
            "description": AFTER_LOSS[name][1] if name in AFTER_LOSS else "honest chain of A",
            "batch_id": hashlib.sha256(payload).hexdigest(),
        }
        if name in AFTER_LOSS:
            entry["dropped"] = [r.as_cbor() for r in AFTER_LOSS[name][0]]
            entry["payload"] = payload.hex()
        vectors.append(entry)
    return {
        "description": (
            "Loss receipts of spec v1.1 (docs/attestation-v1.md): device A (identity A of "
            "cose.json) seals batches 0-5, loses its spool and goes on at seq 6 linked to "
            "batch 5, stating the loss in key 9. Each sequence is what one verifier sees in "
            "order: the finding of each file; 'stated', the missing seqs the device stated lost "
            "(first, last, reason) as a verifier records them over the whole sequence; "
            "'detail', what gateway/wire/verify.py says of the last file. A v1 verifier gives the "
            "same findings."
        ),
        "vectors": vectors,
        "sequences": SEQUENCES,
    }


def main() -> None:
    out = HERE / "loss"
    out.mkdir(exist_ok=True)
    for old in out.glob("*.cbor"):
        old.unlink()
    files = build()
    for name, message in files.items():
        (out / f"{name}.cbor").write_bytes(message)
    (HERE / "loss.json").write_text(json.dumps(document(files), indent=1) + "\n")


if __name__ == "__main__":
    main()
