"""The chain head vectors of spec v1.1 (tests/vectors/head/): reproduced byte for byte, read
from the spec page alone, and told apart by the gateway exactly as the page says. Regenerate
them with `python tests/vectors/make_head_vectors.py`."""

from __future__ import annotations

import json
from pathlib import Path

import cbor2
import pytest

from gateway.device import head
from gateway.wire import cose
from gateway.wire.verify import Verifier
from tests import make_batches as mb
from tests.vectors import make_head_vectors as hv

VECTORS = Path(__file__).parents[1] / "vectors"
DOC = json.loads((VECTORS / "head.json").read_text())
LOSS = json.loads((VECTORS / "loss.json").read_text())


def _file(name: str) -> bytes:
    return (VECTORS / "head" / f"{name}.cbor").read_bytes()


def test_files_are_reproduced_byte_for_byte() -> None:
    built = hv.build()
    assert {p.stem for p in (VECTORS / "head").glob("*.cbor")} == set(built)
    for name, (message, _, _) in built.items():
        assert _file(name) == message, name
    assert json.loads(json.dumps(hv.document(built))) == DOC


def test_the_payload_reads_as_the_spec_page_says() -> None:
    """Section 5.1 with nothing from the gateway: a COSE_Sign1 of typ head whose payload is
    the map 1 did, 2 seq, 3 batch id, 4 readings taken, 5 boot id, 6 spool id, and whose
    batch id is the one of batch 5 in the loss vectors' chain."""
    tag = cbor2.loads(_file("a-5"))
    protected, unprotected, payload, signature = tag.value
    assert tag.tag == 18 and unprotected == {} and len(signature) == 64
    assert cbor2.loads(protected)[16] == "application/vnd.depin.head+cbor"
    m = cbor2.loads(payload)
    want = DOC["payload"]
    assert set(m) == {1, 2, 3, 4, 5, 6}
    assert [m[1], m[2], m[4], m[6]] == [want["1"], want["2"], want["4"], want["6"]]
    assert m[3].hex() == want["3"] and m[5].hex() == want["5"]
    chain5 = next(v for v in LOSS["vectors"] if v["file"] == "loss/chain-5.cbor")
    assert m[3].hex() == chain5["batch_id"]


@pytest.mark.parametrize("entry", DOC["vectors"], ids=lambda e: e["file"])
def test_a_gateway_takes_only_its_own_head(entry: dict[str, object]) -> None:
    name = Path(str(entry["file"])).stem
    a, b = mb.identity(mb.SEED_A), mb.identity(mb.SEED_B)
    found = head.read(_file(name), a)
    assert (found is not None) is entry["is_head"]
    if found is not None:
        assert (found.seq, found.taken, found.spool) == (5, hv.TAKEN, hv.SPOOL)
    assert head.read(_file(name), b) is None  # never B's, whoever signed


def test_a_head_is_not_a_batch_to_a_verifier() -> None:
    """A head on a batch topic is refused, as any unknown typ is (v1 verifiers agree)."""
    finding = Verifier().check(_file("a-5"))
    assert finding.kind == "malformed" and "typ" in finding.detail


def test_what_is_not_a_head_is_refused_before_it_is_decoded() -> None:
    a = mb.identity(mb.SEED_A)
    big = cose.sign1(a, cose.TYP_HEAD, b"\x00" * head.MAX_HEAD_BYTES)
    assert head.read(big, a) is None
    assert head.read(b"", a) is None
    assert head.read(_file("a-5")[:-1], a) is None
