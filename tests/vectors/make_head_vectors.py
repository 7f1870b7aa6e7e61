"""Write the chain head vectors of spec v1.1: python tests/vectors/make_head_vectors.py.

Device A (tests/make_batches.py's seed) has sealed batches 0-5 of the loss vectors' chain;
`head/a-5.cbor` is the head it keeps on the broker after batch 5. The others are what a gateway
must not take for its own head: one signed by device B about A, and A's head under another typ.
Deterministic (fixed seeds, Ed25519); tests/unit/test_head_vectors.py checks every byte.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1]))

from gateway.device.head import Head, encode  # noqa: E402
from gateway.wire import cose  # noqa: E402
from tests import make_batches as mb  # noqa: E402

SPOOL = "5f0d2c4e8a9b1c3d"
TAKEN = 18  # 3 readings in each of batches 0-5


def head_of_a() -> Head:
    chain = mb.Chain(mb.identity(mb.SEED_A))
    chain.take(6)
    return Head(5, chain.built[5].id, TAKEN, mb.BOOT, SPOOL)


# name -> (message, whose head a gateway of device A takes it for: True or False, what it is)
def build() -> dict[str, tuple[bytes, bool, str]]:
    a, b = mb.identity(mb.SEED_A), mb.identity(mb.SEED_B)
    h = head_of_a()
    payload = encode(a.did, h)
    return {
        "a-5": (cose.sign1(a, cose.TYP_HEAD, payload), True, "A's head after batch 5"),
        "b-signs-a-5": (
            cose.sign1(b, cose.TYP_HEAD, payload),
            False,
            "the same payload signed by device B: not A's",
        ),
        "a-5-as-birth": (
            cose.sign1(a, cose.TYP_BIRTH, payload),
            False,
            "A's head payload under the birth typ: not a head",
        ),
    }


def document(files: dict[str, tuple[bytes, bool, str]]) -> dict[str, Any]:
    h = head_of_a()
    return {
        "description": (
            "Chain heads of spec v1.1 (docs/attestation-v1.md section 5.1): device A "
            "(identity A of cose.json) after batch 5 of loss.json's chain. 'payload' holds "
            "the decoded map of a-5 (byte strings in hex); 'is_head' says whether a gateway "
            "of device A takes the message for its own head."
        ),
        "payload": {
            "1": mb.identity(mb.SEED_A).did,
            "2": h.seq,
            "3": h.batch.hex(),
            "4": h.taken,
            "5": h.boot.hex(),
            "6": h.spool,
        },
        "vectors": [
            {"file": f"head/{name}.cbor", "description": what, "is_head": ok}
            for name, (_, ok, what) in files.items()
        ],
    }


def main() -> None:
    out = HERE / "head"
    out.mkdir(exist_ok=True)
    for old in out.glob("*.cbor"):
        old.unlink()
    files = build()
    for name, (message, _, _) in files.items():
        (out / f"{name}.cbor").write_bytes(message)
    (HERE / "head.json").write_text(json.dumps(document(files), indent=1) + "\n")


if __name__ == "__main__":
    main()
