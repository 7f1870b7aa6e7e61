"""The strict scan (gateway/wire/strict.py): every class of hostile input refused from its bytes
with the offset named, before cbor2 builds anything; honest messages pass; the deterministic
encoding of spec section 7 judged on the bytes as the re-encoding judged it; and the hostile
vectors of spec v1.1 (tests/vectors/hostile/) reproduced byte for byte with their findings."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest

from gateway.wire import cose, dcbor, limits, payloads, strict
from gateway.wire.verify import Examined, Finding, Verifier, examine
from tests import hostile as h
from tests import make_batches as mb
from tests.vectors import make_hostile_vectors as hv

VECTORS = Path(__file__).parents[1] / "vectors"
DOC = json.loads((VECTORS / "hostile.json").read_text())
OFFSET = re.compile(r"byte (\d+)")

HOSTILE = {
    "sharing-bomb": h.sharing_bomb(31),
    "self-reference": h.self_reference(),
    **{f"tag-{k}": v for k, v in h.unknown_tags().items()},
    "deep-nesting": h.deep_nesting(),
    **{f"huge-{k}": v for k, v in h.huge_lengths().items()},
    "indefinite-array": b"\x9f\x01\xff",
    "undefined": b"\xf7",
    "simple-99": b"\xf8\x63",
    "reserved-head": b"\x1c",
    "truncated-head": b"\x1a\x00\x01",
    "trailing": b"\x01\x02",
    "empty": b"",
    "map-key-array": b"\xa1\x80\x01",
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_input_is_refused_with_its_offset(name: str) -> None:
    data = HOSTILE[name]
    with pytest.raises(strict.DecodeError) as e:
        strict.loads(data)
    found = OFFSET.search(str(e.value))
    assert found is not None, str(e.value)
    assert int(found[1]) <= len(data)
    assert e.value.kind == "malformed"


@pytest.mark.parametrize("name", [n for n in HOSTILE if n not in ("empty", "trailing")])
def test_hostile_input_inside_a_signed_batch_is_malformed(name: str) -> None:
    ident = mb.identity(mb.SEED_C)
    message = h.signed(h.batch_map(ident, HOSTILE[name]), ident=ident)
    f = examine(message)
    assert isinstance(f, Finding) and f.forged and "payload byte" in f.detail
    # an indefinite length is not the deterministic encoding either; the others are malformed
    assert f.kind == ("non-deterministic" if name == "indefinite-array" else "malformed")


def test_tags_are_allowed_only_where_the_caller_says() -> None:
    assert strict.loads(b"\xd2\x80", tags=frozenset({18})).tag == 18
    with pytest.raises(strict.DecodeError, match="byte 1: CBOR tag 18"):
        strict.loads(b"\x81\xd2\x80")
    # tag 18 inside the envelope is refused: only the one around the message is allowed
    c0 = mb.Chain(mb.identity(mb.SEED_A)).take(1)[0]
    env = cbor2.loads(c0.message).value
    nested = cbor2.dumps(cbor2.CBORTag(18, [env[0], {}, env[2], cbor2.CBORTag(18, env[3])]))
    f = Verifier().check(nested)
    assert f.kind == "malformed" and "CBOR tag 18" in f.detail


def test_honest_messages_pass() -> None:
    chain = mb.Chain(mb.identity(mb.SEED_A))
    for b in chain.take(3):
        strict.scan(b.payload, deterministic=True)
        strict.scan(b.message[1:])
    birth = mb.birth_payload(mb.identity(mb.SEED_A))
    strict.scan(birth, deterministic=True)
    att = mb.attestation_payload(mb.identity(mb.SEED_B), mb.identity(mb.SEED_A))
    strict.scan(att, deterministic=True)


def test_marks_give_the_containers_of_each_depth() -> None:
    data = dcbor.dumps([1, [2, "ab"], {"k": [b"x"]}])
    marks: list[list[tuple[int, int]]] = [[], [], []]
    strict.scan(data, marks=marks)
    assert marks[0] == [(0, len(data))]
    assert [data[a:b] for a, b in marks[1]] == [dcbor.dumps([2, "ab"]), dcbor.dumps({"k": [b"x"]})]
    assert [data[a:b] for a, b in marks[2]] == [dcbor.dumps([b"x"])]


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (bytes.fromhex("1817"), "non-deterministic"),  # 23 in two bytes
        (bytes.fromhex("190017"), "non-deterministic"),
        (bytes.fromhex("3a0000ffff"), "non-deterministic"),  # -65536 in five bytes
        (bytes.fromhex("5801aa"), "non-deterministic"),
        (bytes.fromhex("a20201" + "0101"), "non-deterministic"),  # keys 2, 1
        (bytes.fromhex("a2010101" + "02"), "non-deterministic"),  # key 1 twice
        (bytes.fromhex("a2616202" + "616101"), "non-deterministic"),  # "b" before "a"
        (bytes.fromhex("f93c00"), "non-deterministic"),  # 1.0
        (bytes.fromhex("f98000"), "non-deterministic"),  # -0.0
        (bytes.fromhex("fa3fc00000"), "non-deterministic"),  # 1.5 as a single
        (bytes.fromhex("fb3ff8000000000000"), "non-deterministic"),  # 1.5 as a double
        (bytes.fromhex("fb430c6bf526340000"), "non-deterministic"),  # 1e15, integral
        (bytes.fromhex("f97e00"), "nan"),
        (bytes.fromhex("fa7f800000"), "nan"),
        (bytes.fromhex("fbfff0000000000000"), "nan"),
        (bytes.fromhex("7f6161ff"), "non-deterministic"),  # indefinite text
    ],
)
def test_deterministic_encoding_is_judged_on_the_bytes(data: bytes, kind: str) -> None:
    with pytest.raises(strict.DecodeError) as e:
        strict.scan(data, deterministic=True)
    assert e.value.kind == kind
    assert not dcbor.is_deterministic(data)


@pytest.mark.parametrize(
    "value",
    [0, 23, 24, 255, 256, 65536, 2**32, 2**64 - 1, -1, -25, -(2**64), 1.5, 0.1, 1e300,
     2.0**64, -(2.0**64) * 3, 5e-324, 65504.5, 1767225600.731, "", "abc", b"", [1, [2]],
     {0: "a", 1: "b", "af": ["x"], "as": 0.5}, True, False, None],
)  # fmt: skip
def test_what_the_encoder_writes_passes(value: object) -> None:
    data = dcbor.dumps(value)
    strict.scan(data, deterministic=True)
    assert dcbor.is_deterministic(data)


def test_no_re_encoding_is_needed_to_judge_a_batch() -> None:
    """decode_batch's record bytes are the payload's own bytes, sliced, never re-encoded."""
    recs = [
        payloads.encode_record("climate/temperature", "Cel", 21.37, mb.SEALED + 0.25, 0.5, []),
        payloads.encode_record("co2/co2", "ppm", None, mb.SEALED + 3, 1, ["sensor-error"]),
    ]
    payload = mb.batch_payload(mb.identity(mb.SEED_A), 0, payloads.ZERO_PREV, recs)
    b = payloads.decode_batch(payload)
    assert b.record_bytes == recs
    assert all(r in payload for r in b.record_bytes)


# --- the hostile vectors of spec v1.1 -----------------------------------------------------


def test_hostile_vectors_are_reproduced_byte_for_byte() -> None:
    built = hv.build()
    assert {p.stem for p in (VECTORS / "hostile").glob("*.cbor")} == set(built)
    for name, (message, _, _, _) in built.items():
        assert (VECTORS / "hostile" / f"{name}.cbor").read_bytes() == message, name
    assert json.loads(json.dumps(hv.document(built))) == DOC


@pytest.mark.parametrize("entry", DOC["vectors"], ids=lambda e: e["file"])
def test_each_hostile_vector_gets_its_finding(entry: dict[str, object]) -> None:
    data = (VECTORS / str(entry["file"])).read_bytes()
    f = Verifier().check(data, source=str(entry["file"]))
    assert f.kind == entry["expect"], f.detail
    if f.kind == "malformed":
        assert f.forged


def test_over_cap_is_refused_from_the_length_alone() -> None:
    """The cap comes from the typ in the protected header; nothing after it is read: a message
    whose payload is not even CBOR gets the same finding."""
    entry = next(v for v in DOC["vectors"] if v["file"] == "hostile/over-cap-birth.cbor")
    data = (VECTORS / entry["file"]).read_bytes()
    broken = data[:100] + b"\xff" * (len(data) - 100)
    for message in (data, broken):
        f = Verifier().check(message)
        assert f.kind == "malformed" and f"over the {DOC['caps']['birth']} byte cap" in f.detail
    assert cose.typ_of(broken) == cose.TYP_BIRTH


# --- what a message may become: items and arrays-plus-maps bounded ----------------------------


def _flood(unit: bytes, n: int) -> bytes:
    """An array of `n` copies of one item."""
    return h.head(4, n) + unit * n


def _counts(value: object) -> tuple[int, int]:
    """Items and arrays-plus-maps of a decoded value (trusted: built here)."""
    items, containers, todo = 0, 0, [value]
    while todo:
        v = todo.pop()
        items += 1
        if isinstance(v, list):
            containers += 1
            todo.extend(v)
        elif isinstance(v, dict):
            containers += 1
            for k, x in v.items():
                todo += (k, x)
    return items, containers


def test_the_largest_honest_batch_with_flags_and_receipts_decodes_with_room_to_spare() -> None:
    """10,000 records (the largest batch_max_readings), three flags on every one, and dropped
    receipts: it verifies, and holds half the item and container bounds or less."""
    ident = mb.identity(mb.SEED_A)
    flags = ["spike", "stuck", "module-error"]
    recs = [
        payloads.encode_record(
            "climate/temperature", "Cel", 20 + i * 0.001, mb.SEALED + i * 0.731, 0.75, flags
        )
        for i in range(10_000)
    ]
    drops = [payloads.DropReceipt(5, mb.SEALED - 60, mb.SEALED - 30, "spool-full")] * 8
    payload = mb.batch_payload(ident, 0, payloads.ZERO_PREV, recs, dropped=drops)
    items, containers = _counts(cbor2.loads(payload))
    assert 2 * items <= strict.MAX_ITEMS and 2 * containers <= strict.MAX_CONTAINERS
    assert isinstance(examine(mb.sign(ident, payload)), Examined)


def test_items_past_the_bound_are_refused_where_they_are_declared() -> None:
    n = strict.MAX_ITEMS
    strict.scan(_flood(b"\x00", n - 1))  # the array and its items: exactly the bound
    with pytest.raises(strict.DecodeError, match=rf"^byte 0: declares {n + 1} items"):
        strict.scan(_flood(b"\x00", n))
    first = _flood(b"\x00", n - 3)  # with the outer array and the second one: one over
    with pytest.raises(strict.DecodeError) as e:
        strict.scan(h.array(first, b"\x81\x00"))
    assert str(e.value).startswith(f"byte {1 + len(first)}: declares {n + 1} items")
    assert e.value.kind == "malformed"


def test_arrays_and_maps_past_the_bound_are_refused_at_the_first_one_over() -> None:
    n = strict.MAX_CONTAINERS
    strict.scan(h.head(4, n - 1) + b"\x80" * (n - 1))
    data = h.head(4, n) + b"\xa0" * n
    with pytest.raises(strict.DecodeError) as e:
        strict.scan(data)
    assert str(e.value) == f"byte {len(data) - 1}: more than {n} arrays and maps"
    assert e.value.kind == "malformed"


# What a process holds after examining one signed message of the batch cap (4 MiB) or less:
# its own peak (VmHWM, which starts afresh at exec; ru_maxrss would carry pytest's over).
_CHILD = """
import json, os, sys
from gateway.wire import verify
from tests.hostile import peak_rss
message = open(sys.argv[1], "rb").read()
before = peak_rss(os.getpid())
finding = verify.examine(message)
after = peak_rss(os.getpid())
kind, detail = getattr(finding, "kind", ""), getattr(finding, "detail", "")
print(json.dumps({"before": before, "after": after, "kind": kind, "detail": detail}))
"""
MIB = 1 << 20


def _at_the_bounds() -> bytes:
    """As many one-pair maps as the container bound lets through, then two-byte texts up to
    the item bound: the most objects for the fewest bytes the scan passes (about 400 bytes a
    map, 60 a text)."""
    m = strict.MAX_CONTAINERS - 3  # the batch map, the records, the array of texts
    rest = strict.MAX_ITEMS - (9 + (m + 1) + 3 * m + 1)
    return h.head(4, m + 1) + b"\xa1\x00\x62ab" * m + _flood(b"\x62ab", rest)


_BIG = limits.CAPS["batch"] - 400
SHAPES = {
    "4M-empty-arrays": lambda: _flood(b"\x80", _BIG),
    "4M-empty-maps": lambda: _flood(b"\xa0", _BIG),
    "1.4M-half-floats": lambda: _flood(b"\xf9\x3c\x01", _BIG // 3),
    "1.4M-two-byte-texts": lambda: _flood(b"\x62ab", _BIG // 3),
    "maps-and-texts-at-the-bounds": _at_the_bounds,
}


@pytest.mark.parametrize("shape", SHAPES)
def test_a_signed_batch_becomes_a_few_tens_of_mb_at_most(shape: str, tmp_path: Path) -> None:
    """Before the bounds, 4 MiB of empty arrays became 768 MB of Python objects in `examine`;
    now the worst a batch can do is about 30 MB more than the process held before it (what the
    interpreter and its imports hold beside is not the message's doing, and varies)."""
    ident = h.throwaway()
    message = h.signed(h.batch_map(ident, SHAPES[shape]()), ident=ident)
    assert limits.too_big("depin/v1/x/batch", len(message)) is None
    path = tmp_path / "message.cbor"
    path.write_bytes(message)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, str(path)],
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=h.memory_limit(2048 * MIB),
    )
    got = json.loads(out.stdout)
    assert got["kind"] == "malformed", got
    assert got["after"] - got["before"] < 40 * MIB, got


@pytest.mark.parametrize(
    "data",
    [
        bytes.fromhex("816361"),  # ["a..."]: a text of 3 bytes with 1
        bytes.fromhex("a262616200626163"),  # {"ab": 0, "ac": ...}: the value missing
        bytes.fromhex("a26261620061"),  # {"ab": 0, "a...": a key out of order, cut short
        bytes.fromhex("82f93c"),  # a half float cut short
    ],
)
def test_a_short_item_at_the_end_is_malformed_not_out_of_order(data: bytes) -> None:
    for det in (False, True):
        with pytest.raises(strict.DecodeError) as e:
            strict.scan(data, deterministic=det)
        assert str(e.value) == f"byte {len(data)}: the item ends early"
        assert e.value.kind == "malformed"
