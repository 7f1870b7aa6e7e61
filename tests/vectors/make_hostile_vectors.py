"""Write the hostile-input vectors of spec v1.1: python tests/vectors/make_hostile_vectors.py.

What anyone with publish rights on the broker can send, each message signed so that a verifier
gets past the signature (device A where the payload claims to be A's, identity C of
tests/make_batches.py, registered nowhere, for the rest): CBOR that cbor2 would turn into
graphs, cycles or objects, nesting, declared lengths and numbers of arrays a decoder must not
believe, messages over their kind's byte cap, births and attestations whose fields break
sections 5 and 6, and one valid attestation revision (key 11). Deterministic (fixed seeds,
Ed25519); every finding is the one `depin-gateway verify` gives.
tests/unit/test_strict_cbor.py checks every byte.
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

from gateway.wire import cose, dcbor, limits, strict  # noqa: E402
from gateway.wire.identity import Identity  # noqa: E402
from tests import hostile as h  # noqa: E402
from tests import make_batches as mb  # noqa: E402


def _changed(payload: bytes, **change: Any) -> bytes:
    """`payload` (a CBOR map with integer keys) with `k<n>=v` set at key n."""
    fields: dict[int, Any] = strict.loads(payload, deterministic=True)
    for k, v in change.items():
        fields[int(k[1:])] = v
    return dcbor.dumps(fields)


def _attestation(attestor: Identity, device: Identity, **change: Any) -> bytes:
    return _changed(mb.attestation_payload(attestor, device), **change)


def _birth(ident: Identity, **change: Any) -> bytes:
    return _changed(mb.birth_payload(ident), **change)


# name -> (message, topic kind, expected finding, what it is)
def build() -> dict[str, tuple[bytes, str, str, str]]:
    a, b, c = (mb.identity(s) for s in (mb.SEED_A, mb.SEED_B, mb.SEED_C))

    def batch(records: bytes) -> bytes:
        return h.signed(h.batch_map(c, records), ident=c)

    out: dict[str, tuple[bytes, str, str, str]] = {
        "sharing-bomb": (
            batch(h.sharing_bomb(31)),
            "batch",
            "malformed",
            "records: value-sharing tags 28/29 nested 31 deep (2^31 items as a tree)",
        ),
        "self-reference": (
            batch(h.self_reference()),
            "batch",
            "malformed",
            "records: an array that contains itself (tags 28/29)",
        ),
    }
    for name, item in h.unknown_tags().items():
        out[f"tag-{name}"] = (
            batch(h.array(item)),
            "batch",
            "malformed",
            f"a record that is a tagged item ({name}, tag {strict_tag(item)})",
        )
    out["deep-nesting"] = (
        batch(h.deep_nesting(10_000)),
        "batch",
        "malformed",
        "records: arrays nested 10,000 deep",
    )
    n = strict.MAX_CONTAINERS
    out["many-containers"] = (
        batch(h.head(4, n) + b"\x80" * n),
        "batch",
        "malformed",
        f"records: {n} empty arrays, one more array than a message may hold (each costs a"
        " decoder about 200 bytes: 4 MiB of them, 800 MB)",
    )
    for name, item in h.huge_lengths().items():
        out[f"huge-{name}"] = (
            batch(item),
            "batch",
            "malformed",
            f"records: a {name} head that declares far more than the message holds",
        )
    over = {
        "birth": h.signed(h.oversized(limits.CAPS["birth"] + 1), cose.TYP_BIRTH, c),
        "attestation": h.signed(
            h.oversized(limits.CAPS["attestation"] + 1), cose.TYP_ATTESTATION, c
        ),
    }
    for kind, message in over.items():
        out[f"over-cap-{kind}"] = (
            message,
            kind,
            "malformed",
            f"a {kind} of {len(message)} bytes, over the {limits.CAPS[kind]} byte cap of its kind",
        )
    out["birth-started-1e300"] = (
        mb.sign(a, _birth(a, k4=1e300), cose.TYP_BIRTH),
        "birth",
        "malformed",
        "device A's birth started at 1e300",
    )
    out["birth-boot-15-bytes"] = (
        mb.sign(a, _birth(a, k3=bytes(15)), cose.TYP_BIRTH),
        "birth",
        "malformed",
        "device A's birth with a boot id of 15 bytes",
    )
    out["attestation-status-great"] = (
        mb.sign(b, _attestation(b, a, k8="great"), cose.TYP_ATTESTATION),
        "attestation",
        "malformed",
        'attestor B about device A with chain status "great"',
    )
    out["attestation-score-1.5"] = (
        mb.sign(b, _attestation(b, a, k9=1.5), cose.TYP_ATTESTATION),
        "attestation",
        "malformed",
        "attestor B about device A with score 1.5",
    )
    out["attestation-revision-0"] = (
        mb.sign(b, _attestation(b, a, k11=0), cose.TYP_ATTESTATION),
        "attestation",
        "malformed",
        "attestor B about device A, revision 0 written out (absent means 0; written, >= 1)",
    )
    out["attestation-revision-2"] = (
        mb.sign(b, _attestation(b, a, k6=357, k9=0.75, k11=2), cose.TYP_ATTESTATION),
        "attestation",
        "attestation",
        "attestor B about device A, revision 2 of cose/attestation.cbor's epoch (valid)",
    )
    return out


def strict_tag(item: bytes) -> int:
    ai = item[0] & 0x1F
    if ai < 24:
        return ai
    size = 1 << (ai - 24)
    return int.from_bytes(item[1 : 1 + size], "big")


def document(files: dict[str, tuple[bytes, str, str, str]]) -> dict[str, Any]:
    return {
        "description": (
            "Hostile messages of spec v1.1 (docs/attestation-v1.md sections 7, 8 and 11): "
            "'expect' is the finding of a fresh verifier without allow-list, 'topic' the kind "
            "of topic it arrives on (its byte cap is in 'caps'). Signed by identity C "
            "(seed in 'identities'; registered nowhere), by device A (births) or attestor B "
            "(attestations) of cose.json, so a verifier gets past the signature. Every byte "
            "is reproducible."
        ),
        "identities": {
            "C": {"seed": mb.SEED_C.hex(), "did": mb.identity(mb.SEED_C).did},
        },
        "caps": dict(limits.CAPS),
        "default_cap": limits.DEFAULT_CAP,
        "max_depth": strict.MAX_DEPTH,
        "max_items": strict.MAX_ITEMS,
        "max_containers": strict.MAX_CONTAINERS,
        "vectors": [
            {
                "file": f"hostile/{name}.cbor",
                "topic": topic,
                "size": len(message),
                "sha256": hashlib.sha256(message).hexdigest(),
                "expect": expect,
                "description": what,
            }
            for name, (message, topic, expect, what) in files.items()
        ],
    }


def main() -> None:
    out = HERE / "hostile"
    out.mkdir(exist_ok=True)
    for old in out.glob("*.cbor"):
        old.unlink()
    files = build()
    for name, (message, _, _, _) in files.items():
        (out / f"{name}.cbor").write_bytes(message)
    (HERE / "hostile.json").write_text(json.dumps(document(files), indent=1) + "\n")


if __name__ == "__main__":
    main()
