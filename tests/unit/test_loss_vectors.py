"""The loss receipt vectors of spec v1.1 (tests/vectors/loss/): reproduced byte for byte, valid
v1 batches by rules written here from the v1 page alone, and read by the verifier as the
sequences say. Regenerate them with `python tests/vectors/make_loss_vectors.py`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import cbor2
import pytest

from gateway.wire import loss
from gateway.wire.verify import Verifier
from tests.vectors import make_loss_vectors as lv

VECTORS = Path(__file__).parents[1] / "vectors"
DOC = json.loads((VECTORS / "loss.json").read_text())
FILES = {Path(e["file"]).stem: e for e in DOC["vectors"]}

# The grammar of the spec page, as an independent verifier would write it.
WHY = re.compile(r"([a-z0-9]+(?:-[a-z0-9]+)*) seq (0|[1-9][0-9]*)(-(0|[1-9][0-9]*))?")


def _file(name: str) -> bytes:
    return (VECTORS / "loss" / f"{name}.cbor").read_bytes()


def test_files_are_reproduced_byte_for_byte() -> None:
    built = lv.build()
    assert {p.stem for p in (VECTORS / "loss").glob("*.cbor")} == set(built) == set(FILES)
    for name, message in built.items():
        assert _file(name) == message, name
    assert json.loads(json.dumps(lv.document(built))) == DOC


@pytest.mark.parametrize("name", sorted(lv.AFTER_LOSS))
def test_batch_after_a_loss_is_a_valid_v1_batch(name: str) -> None:
    """Spec v1 section 3, checked on the decoded payload with nothing from the gateway: the
    exact key set, and key 9 as v1 drop receipts. A v1 verifier accepts the batch."""
    payload = cbor2.loads(_file(name)).value[2]
    m = cbor2.loads(payload)
    assert set(m) == set(range(1, 11))
    assert m[2] == 6 and m[3] == bytes.fromhex(FILES["chain-5"]["batch_id"])
    assert hashlib.sha256(payload).hexdigest() == FILES[name]["batch_id"]
    assert m[9] == FILES[name]["dropped"]
    for r in m[9]:
        assert set(r) == {"n", "from", "to", "why"}
        assert type(r["n"]) is int and r["n"] > 0
        assert all(type(r[k]) in (int, float) for k in ("from", "to"))
        assert isinstance(r["why"], str)
    assert Verifier().check(_file(name)).kind == "valid"


@pytest.mark.parametrize("name", sorted(lv.AFTER_LOSS))
def test_grammar_agrees_with_an_independent_reading(name: str) -> None:
    for r in FILES[name]["dropped"]:
        m = WHY.fullmatch(r["why"])
        ours = loss.parse_loss(r["why"])
        if m is None or (m[3] and int(m[4]) <= int(m[2])):
            assert ours is None, r["why"]
        else:
            assert ours == (m[1], int(m[2]), int(m[4] or m[2]))


@pytest.mark.parametrize("seq", DOC["sequences"], ids=lambda s: "-".join(s["files"]))
def test_sequence(seq: dict[str, Any]) -> None:
    v = Verifier()
    found = [v.check(_file(n), source=n) for n in seq["files"]]
    assert [f.kind for f in found] == seq["expect"]
    assert found[-1].detail == seq["detail"]
    assert [[a, b, why] for _, a, b, why in v.stated_losses] == seq["stated"]
    assert not any(f.forged for f in found)
