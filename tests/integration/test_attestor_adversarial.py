"""Adversarial messages fed to an attestor worker (`Worker.handle`, one MQTT message each), on
SQLite and PostgreSQL alike: each is rejected or recorded exactly as spec section 9 says, none
makes the worker raise, and a rejected message changes nothing already stored (only the
rejection counts the `attestor devices` table shows grow).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from gateway.attestor import registry
from gateway.attestor.config import loads
from gateway.attestor.service import Worker
from gateway.wire import cose, dcbor, merkle, payloads
from gateway.wire.identity import Identity
from gateway.wire.verify import ACCEPTED, MAX_MESSAGE, Finding, Verifier, format_finding
from tests import make_batches as mb

EPOCH = 3600
START = mb.SEALED - mb.SEALED % EPOCH  # the epoch the test batches are sealed in
END = START + EPOCH
NOW = float(mb.SEALED + 3000)  # "received" time of every message: inside the epoch
A = mb.identity(mb.SEED_A)  # the registered device
ATTESTOR = mb.identity(mb.SEED_B)  # the worker's own key
C = mb.identity(mb.SEED_C)  # a second device, registered only where a test says so
ZERO = payloads.ZERO_PREV
TABLES = ("devices", "batches", "evidence", "gaps", "births", "attestations")
# Two quantities every 60 s: 120 readings expected per hour-long epoch.
SENSORS: list[dict[Any, Any]] = [
    {"id": "climate", "driver": "bme280", "quantities": ["temperature", "humidity"], "interval": 60}
]
STORE_ACCEPTS = frozenset({"valid", "gap", "reordered"})  # kinds that add a batch to the chain


def topic(ident: Identity, kind: str = "batch") -> str:
    return f"depin/v1/{ident.device_id}/{kind}"


# --- the worker and its store -------------------------------------------------------------------


@pytest.fixture
def w(store: str, tmp_path: Path) -> Iterator[Worker]:
    cfg = loads(
        f'[attestor]\nstore = "{store}"\nepoch = "1 h"\ngrace = "0 s"\n'
        '[broker]\nurl = "mqtt://127.0.0.1:1"\n',
        base_dir=tmp_path,
    )
    worker = Worker(cfg, ATTESTOR)
    try:
        yield worker
    finally:
        worker.db.close()


def _plain(x: Any) -> Any:
    return bytes(x) if isinstance(x, memoryview) else x


def snapshot(w: Worker) -> dict[str, list[tuple[Any, ...]]]:
    """Every stored row except the rejection counts, in a comparable form."""
    out = {}
    for table in TABLES:
        rows = w.db.execute(f"SELECT * FROM {table}").fetchall()
        out[table] = sorted((tuple(_plain(x) for x in r) for r in rows), key=repr)
    return out


def total(counts: dict[str, dict[str, int]]) -> int:
    return sum(n for kinds in counts.values() for n in kinds.values())


def feed(w: Worker, message: bytes, where: str | None = None) -> Finding:
    """One message through the worker: never raises, exactly one finding."""
    before = sum(w.counts.values())
    f = w.handle(where or topic(A), message, now=NOW)
    assert isinstance(f, Finding)
    assert sum(w.counts.values()) == before + 1
    return f


def rejected(w: Worker, message: bytes, kind: str, *, under: str | None = A.did) -> Finding:
    """Feed a message that must be rejected as `kind`: nothing stored changes, and one more
    `kind` is counted under `under` (a did, or "" for unknown and unproven senders; None:
    checked by the caller)."""
    before, counts = snapshot(w), registry.counts(w.db)
    f = feed(w, message)
    assert (f.kind, f.forged) == (kind, True), format_finding(f)
    assert snapshot(w) == before
    after = registry.counts(w.db)
    assert total(after) == total(counts) + 1
    if under is not None:
        counts.setdefault(under, {})
        counts[under][kind] = counts[under].get(kind, 0) + 1
        assert after == counts
    return f


def register(w: Worker, *idents: Identity) -> None:
    for ident in idents or (A,):
        registry.register(w.db, ident.did, ident.device_id[-6:], now=NOW)


def honest(w: Worker, n: int, ident: Identity = A) -> mb.Chain:
    """Register `ident` and store the first n batches of its honest chain."""
    register(w, ident)
    chain = mb.Chain(ident)
    for b in chain.take(n):
        assert feed(w, b.message, topic(ident)).kind == "valid"
    return chain


def device(w: Worker, ident: Identity = A) -> dict[str, Any]:
    (row,) = [d for d in registry.devices(w.db) if d["did"] == ident.did]
    return row


def evidence(w: Worker) -> list[tuple[str, int, str, bytes, bytes]]:
    rows = w.db.execute("SELECT did, seq, kind, batch_id, message FROM evidence").fetchall()
    return sorted((str(d), int(s), str(k), bytes(i), bytes(m)) for d, s, k, i, m in rows)


def stored_chain(w: Worker, ident: Identity = A) -> list[tuple[int, bytes, str]]:
    rows = w.db.execute(
        "SELECT seq, batch_id, kind FROM batches WHERE did = ? ORDER BY seq", (ident.did,)
    ).fetchall()
    return [(int(s), bytes(i), str(k)) for s, i, k in rows]


def assert_chain_verifies(w: Worker, chain: mb.Chain, n: int) -> None:
    """The stored batches are the honest chain's first n, and still verify in seq order."""
    assert [(s, i) for s, i, _ in stored_chain(w, chain.ident)] == [
        (b.seq, b.id) for b in chain.built[:n]
    ]
    rows = w.db.execute(
        "SELECT message FROM batches WHERE did = ? ORDER BY seq", (chain.ident.did,)
    ).fetchall()
    v = Verifier(allowed_dids=[chain.ident.did])
    assert [v.check(bytes(m)).kind for (m,) in rows] == ["valid"] * n


def birth(ident: Identity, sensors: Any = None, *, boot: bytes = mb.BOOT) -> bytes:
    return mb.birth_with_sensors(ident, SENSORS if sensors is None else sensors, boot=boot,
                                 started=START)  # fmt: skip


def attestation(w: Worker, ident: Identity) -> dict[str, Any]:
    (a,) = registry.attestations(w.db, did=ident.did)
    return a


# --- signature and identity (spec section 9 steps 1-3) -------------------------------------------


def test_bad_signature(w: Worker) -> None:
    chain = honest(w, 1)
    b1 = chain.take(2)[1]
    flipped = b1.message[:-1] + bytes([b1.message[-1] ^ 0x80])
    f = rejected(w, flipped, "bad-signature", under=None)
    assert (f.did, f.seq, f.batch_id) == (A.did, 1, None)  # claimed, never proven
    protected = cose.protected_header(A.kid, cose.TYP_BATCH)
    by_c = C.sign(cose.sig_structure(protected, b1.payload))  # C's signature under A's kid
    rejected(w, cbor2.dumps(cbor2.CBORTag(18, [protected, {}, b1.payload, by_c])),
             "bad-signature", under=None)  # fmt: skip
    rejected(w, mb.weak_key_forgery(A.did), "bad-signature", under=None)
    dev = device(w)
    assert (dev["last_seq"], dev["batches"], dev["evidence"]) == (0, 1, 0)
    assert feed(w, b1.message).kind == "valid"  # the real batch 1 is still welcome
    assert_chain_verifies(w, chain, 2)


def test_bad_signature_is_not_blamed_on_the_claimed_device(w: Worker) -> None:
    chain = honest(w, 1)
    b1 = chain.take(2)[1]
    rejected(w, b1.message[:-1] + bytes([b1.message[-1] ^ 0x80]), "bad-signature", under="")


def test_kid_did_mismatch(w: Worker) -> None:
    register(w, A, C)
    # Signed by A, naming C: the signer is proven, so it is counted under A.
    rejected(w, mb.sign(A, mb.batch_payload(A, 0, ZERO, did=C.did)), "did-mismatch")
    # Signed by an unregistered key naming A: counted with the unknown senders.
    stranger = mb.identity(bytes(range(100, 132)))
    rejected(w, mb.sign(stranger, mb.batch_payload(stranger, 0, ZERO, did=A.did)),
             "did-mismatch", under="")  # fmt: skip
    assert [d["batches"] for d in registry.devices(w.db)] == [0, 0]


def test_unknown_device_is_rejected_counted_and_never_learned(w: Worker) -> None:
    chain = mb.Chain(A)
    b = chain.take(3)
    for message in (b[0].message, b[1].message, birth(A)):
        rejected(w, message, "unknown-device", under="")
    assert registry.devices(w.db) == [] and not registry.is_registered(w.db, A.did)
    assert registry.counts(w.db) == {"": {"unknown-device": 3}}
    assert snapshot(w) == {t: [] for t in TABLES}
    # Registered later, the same device is accepted from then on (nothing was cached).
    register(w)
    assert [feed(w, x.message).kind for x in b] == ["valid"] * 3
    assert feed(w, birth(A), topic(A, "birth")).kind == "birth"
    dev = device(w)
    assert (dev["last_seq"], dev["batches"], dev["readings"]) == (2, 3, 9)
    assert registry.counts(w.db) == {"": {"unknown-device": 3}, A.did: {"valid": 3}}
    assert_chain_verifies(w, chain, 3)


# --- the payload (step 4) ------------------------------------------------------------------------


def test_tampered_record(w: Worker) -> None:
    chain = honest(w, 1)
    b1 = chain.take(2)[1]
    # One byte of a value changed and re-signed by the device: the root no longer matches.
    f = rejected(w, mb.sign(A, mb.tampered_payload(b1.payload)), "bad-root")
    assert (f.seq, f.records) == (1, 3)
    # Changed after signing: the signature no longer verifies.
    rejected(w, mb.tampered_unsigned(b1), "bad-signature", under=None)
    assert device(w)["evidence"] == 0  # neither is chain evidence
    assert feed(w, b1.message).kind == "valid"
    assert_chain_verifies(w, chain, 2)


def test_wrong_root(w: Worker) -> None:
    chain = honest(w, 1)
    for root in (merkle.root(mb.records()[:2]), bytes(32), merkle.root([])):
        f = mb.canonical_fields(A, 1, chain.built[0].id)
        f[6] = dcbor.dumps(root)
        rejected(w, mb.sign(A, mb.assemble(f)), "bad-root")
    assert registry.counts(w.db)[A.did] == {"valid": 1, "bad-root": 3}


def test_nan_and_infinity(w: Worker) -> None:
    chain = honest(w, 1)
    prev = chain.built[0].id
    for raw in ("f97e00", "f97c00", "f9fc00", "fb7ff8000000000000"):
        rec = mb._record_raw(bytes.fromhex(raw))
        rejected(w, mb.sign(A, mb.batch_payload(A, 1, prev, [rec])), "nan")
    f = mb.canonical_fields(A, 1, prev)
    f[9] = cbor2.dumps([{"n": 1, "from": float("nan"), "to": 1, "why": "x"}], canonical=True)
    rejected(w, mb.sign(A, mb.assemble(dict(sorted(f.items())))), "nan")
    f = mb.canonical_fields(A, 1, prev)
    f[4] = bytes.fromhex("f97c00")  # sealed = +inf
    rejected(w, mb.sign(A, mb.assemble(f)), "nan")
    assert registry.counts(w.db)[A.did] == {"valid": 1, "nan": 6}


def test_base_fields(w: Worker) -> None:
    chain = honest(w, 1)
    for label in (-2, -1, -6, -3):
        rec = dcbor.dumps({label: "x", 0: "climate/t", 1: "Cel", 2: 21, 6: mb.SEALED})
        message = mb.sign(A, mb.batch_payload(A, 1, chain.built[0].id, [rec, mb.record(1)]))
        rejected(w, message, "base-fields")


def test_non_deterministic_encoding(w: Worker) -> None:
    chain = honest(w, 1)
    prev = chain.built[0].id
    t = mb.SEALED - 60
    for rec in (
        mb.raw_record({0: "c/t", 1: "Cel", 2: 21.0, 6: t}),  # integral value as a float
        mb.raw_record({0: "c/t", 1: "Cel", 2: 21.5, 6: t}),  # a double for a half
        mb.raw_record({6: t, 2: 21, 1: "Cel", 0: "c/t"}),  # labels unsorted
        mb._record_raw(bytes.fromhex("1815")),  # 21 in a two-byte head
        mb._record_raw(bytes.fromhex("f98000")),  # -0.0
    ):
        rejected(w, mb.sign(A, mb.batch_payload(A, 1, prev, [rec])), "non-deterministic")
    f = mb.canonical_fields(A, 1, prev)
    f[2] = b"\x18\x01"  # seq 1 in a long head
    rejected(w, mb.sign(A, mb.assemble(f)), "non-deterministic")
    f = mb.canonical_fields(A, 1, prev)
    rejected(w, mb.sign(A, mb.assemble({k: f[k] for k in (2, 1, 3, 4, 5, 6, 7, 8, 10)})),
             "non-deterministic")  # fmt: skip
    assert feed(w, chain.take(2)[1].message).kind == "valid"


# --- the envelope: truncated, oversized, garbage -------------------------------------------------


def test_truncated_messages(w: Worker) -> None:
    chain = honest(w, 1)
    m = chain.take(2)[1].message
    for cut in (1, 2, len(m) // 3, len(m) // 2, len(m) - 65, len(m) - 10, len(m) - 1):
        rejected(w, m[:cut], "malformed", under="")
    assert registry.counts(w.db)[""] == {"malformed": 7}


def test_oversized_message(w: Worker) -> None:
    chain = honest(w, 1)
    big = mb.sign(A, mb.batch_payload(A, 1, chain.built[0].id)) + bytes(MAX_MESSAGE)
    start = time.monotonic()
    f = rejected(w, big, "malformed", under="")
    assert "byte cap for 'batch'" in f.detail and time.monotonic() - start < 2
    # A well-formed, correctly signed batch over the limit (a 16 MiB flag text).
    huge = payloads.encode_record("c/t", "Cel", None, mb.SEALED, 1.0, ["x" * MAX_MESSAGE])
    f = rejected(w, mb.sign(A, mb.batch_payload(A, 1, chain.built[0].id, [huge])), "malformed",
                 under="")  # fmt: skip
    assert "byte cap for 'batch'" in f.detail


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"\x00",
        b"\xff" * 100,
        b"not cbor at all \xff\xfe",
        b'{"json": "instead"}',
        b"\x9b\xff\xff\xff\xff\xff\xff\xff\xff",  # array of 2^64-1 items
        b"\x5b\xff\xff\xff\xff\xff\xff\xff\xff",  # 2^64-1 byte string
        b"\xd2\x84" + b"\x9f" * 100_000,  # endless indefinite nesting
        b"\xd2" * 100_000 + b"\x00",  # tags on tags
    ],
    ids=["empty", "zero", "ff", "text", "json", "array-bomb", "bytes-bomb", "nesting", "tags"],
)
def test_garbage_bytes(w: Worker, garbage: bytes) -> None:
    honest(w, 1)
    start = time.monotonic()
    rejected(w, garbage, "malformed", under="")
    assert time.monotonic() - start < 2


# --- the chain (step 5) --------------------------------------------------------------------------


def test_replayed_batch_is_a_duplicate(w: Worker) -> None:
    chain = honest(w, 4)
    before = snapshot(w)
    for i in (1, 0, 3, 1):
        f = feed(w, chain.built[i].message)
        assert (f.kind, f.forged, f.detail) == ("duplicate", False, "already seen")
    assert snapshot(w) == before
    assert registry.counts(w.db)[A.did] == {"valid": 4, "duplicate": 4}
    dev = device(w)
    assert (dev["last_seq"], dev["batches"], dev["evidence"]) == (3, 4, 0)


def test_replay_that_does_not_link_is_kept_as_evidence(w: Worker) -> None:
    """The device lost its state and started over; the old chain's batch 2 is resent after
    the new chain's 0, 1 and 3: it does not link to the new batch 1, so it is a replay."""
    register(w)
    old = mb.Chain(A).take(3)
    new = mb.Chain(A)
    for _ in range(4):
        new.next(mb.records(2))
    assert [feed(w, new.built[i].message).kind for i in (0, 1, 3)] == ["valid", "valid", "gap"]
    before = snapshot(w)
    f = feed(w, old[2].message)
    assert (f.kind, f.forged) == ("replay", True)
    assert snapshot(w)["batches"] == before["batches"]
    assert evidence(w) == [(A.did, 2, "replay", old[2].id, old[2].message)]
    assert feed(w, old[2].message).kind == "replay"  # again: counted, kept once
    assert len(evidence(w)) == 1 and device(w)["evidence"] == 1
    # A batch that does not extend the chain it names is kept too (prev mismatch).
    wrong = mb.sign(A, mb.batch_payload(A, 4, b"\x22" * 32, mb.records(2)))
    assert feed(w, wrong).kind == "prev-mismatch"
    assert [e[2] for e in evidence(w)] == ["replay", "prev-mismatch"]
    assert feed(w, new.built[2].message).kind == "reordered"  # the real one still fits
    assert [(s, i) for s, i, _ in stored_chain(w)] == [(b.seq, b.id) for b in new.built]
    assert registry.counts(w.db)[A.did] == {
        "valid": 2, "gap": 1, "replay": 2, "prev-mismatch": 1, "reordered": 1,
    }  # fmt: skip
    assert w.tick(now=END) == 1
    a = attestation(w, A)
    assert (a["status"], a["verified"]) == ("replay", 8)


@pytest.mark.parametrize("order", [(0, 3, 1, 2), (3, 2, 1, 0), (1, 0, 3, 2)])
def test_reordered_batches_are_accepted(w: Worker, order: tuple[int, ...]) -> None:
    register(w)
    chain = mb.Chain(A)
    b = chain.take(4)
    found = [feed(w, b[i].message) for i in order]
    assert not any(f.forged for f in found), [format_finding(f) for f in found]
    assert "reordered" in [f.kind for f in found]
    dev = device(w)
    assert (dev["last_seq"], dev["batches"], dev["evidence"]) == (3, 4, 0)
    assert_chain_verifies(w, chain, 4)
    assert feed(w, birth(A), topic(A, "birth")).kind == "birth"
    assert w.tick(now=END) == 1
    a = attestation(w, A)
    assert (a["status"], a["verified"], a["expected"]) == ("ok", 12, 120)
    assert a["score"] == pytest.approx(0.1)
    assert a["root"] == merkle.root([x.id for x in b]).hex()


def test_equivocation(w: Worker, caplog: pytest.LogCaptureFixture) -> None:
    register(w, A, C)
    for ident in (A, C):
        assert feed(w, birth(ident), topic(ident, "birth")).kind == "birth"
    chain = mb.Chain(A)
    b = chain.take(3)
    other = chain.alternative(1)
    assert [feed(w, b[i].message).kind for i in (0, 1)] == ["valid", "valid"]
    before = snapshot(w)
    f = feed(w, other.message)
    assert (f.kind, f.forged, f.batch_id) == ("equivocation", True, other.id)
    alarms = [r for r in caplog.records if r.levelname == "ERROR" and "ALARM" in r.getMessage()]
    assert len(alarms) == 1 and A.did in alarms[0].getMessage()
    assert snapshot(w)["batches"] == before["batches"]  # the first batch 1 stays the chain's
    assert evidence(w) == [(A.did, 1, "equivocation", other.id, other.message)]
    assert feed(w, b[2].message).kind == "valid"  # it links to the first batch 1
    assert feed(w, other.message).kind == "equivocation"
    assert len(evidence(w)) == 1
    dev = device(w)
    assert (dev["last_seq"], dev["batches"], dev["readings"], dev["evidence"]) == (2, 3, 9, 1)
    assert registry.counts(w.db)[A.did] == {"valid": 3, "equivocation": 2}
    assert_chain_verifies(w, chain, 3)
    # The same readings from an honest device C: the chain status alone makes the difference.
    for x in mb.Chain(C).take(3):
        assert feed(w, x.message, topic(C)).kind == "valid"
    assert w.tick(now=END) == 2
    a, c = attestation(w, A), attestation(w, C)
    assert (a["status"], a["score"], a["verified"]) == ("equivocation", 0.0, 9)
    assert a["root"] == merkle.root([x.id for x in b]).hex()
    assert (c["status"], c["verified"]) == ("ok", 9)
    assert c["score"] == pytest.approx(9 / 120)


def test_gap_is_recorded_and_scored_until_filled(w: Worker) -> None:
    register(w, A, C)
    chains = {ident.did: mb.Chain(ident) for ident in (A, C)}
    for ident in (A, C):
        assert feed(w, birth(ident), topic(ident, "birth")).kind == "birth"
        b = chains[ident.did].take(4)
        kinds = [feed(w, b[i].message, topic(ident)) for i in (0, 1, 3)]
        assert [k.kind for k in kinds] == ["valid", "valid", "gap"]
        assert not kinds[2].forged and kinds[2].detail == "seq 2 missing"
    gaps = w.db.execute("SELECT did, first_seq, last_seq FROM gaps ORDER BY did").fetchall()
    assert sorted((str(d), int(f), int(t)) for d, f, t in gaps) == sorted(
        [(A.did, 2, 2), (C.did, 2, 2)]
    )
    assert [k for _, _, k in stored_chain(w, A)] == ["valid", "valid", "gap"]
    # C's missing batch arrives before the epoch is scored; A's only afterwards.
    assert feed(w, chains[C.did].built[2].message, topic(C)).kind == "reordered"
    assert w.tick(now=END) == 2
    a, c = attestation(w, A), attestation(w, C)
    assert (a["status"], a["verified"]) == ("gap", 9)
    assert a["score"] == pytest.approx(9 / 120)  # the gap costs through availability only
    assert (c["status"], c["verified"]) == ("ok", 12)
    assert c["score"] == pytest.approx(12 / 120)
    assert feed(w, chains[A.did].built[2].message).kind == "reordered"
    assert attestation(w, A) == a  # signed once: the late batch does not change it
    assert len(w.db.execute("SELECT * FROM gaps").fetchall()) == 2  # the gaps stay on record
    assert_chain_verifies(w, chains[A.did], 4)


# --- births, model bundles and attestations ------------------------------------------------------


@pytest.mark.parametrize(
    "sensors",
    [
        {"id": "climate", "driver": "bme280", "quantities": ["temperature"], "interval": 60},
        ["climate"],
        [{"id": "climate", "driver": "bme280", "quantities": "temperature", "interval": 60}],
        [{"id": "climate", "driver": "bme280", "quantities": [1], "interval": 60}],
        [{"id": "climate", "driver": "bme280", "quantities": ["temperature"]}],
        [{"id": "climate", "driver": "bme280", "quantities": ["temperature"], "interval": 0}],
        [{"id": "climate", "driver": "bme280", "quantities": ["temperature"], "interval": -5}],
        [{"id": "climate", "driver": "bme280", "quantities": ["temperature"], "interval": "60"}],
        [{"id": "climate", "driver": "bme280", "quantities": ["temperature"], "interval": True}],
        [*SENSORS, None],
    ],
    ids=["map", "text-entry", "quantities-text", "quantity-int", "no-interval", "interval-0",
         "interval-negative", "interval-text", "interval-bool", "null-entry"],
)  # fmt: skip
def test_birth_with_a_bad_sensor_list(w: Worker, sensors: Any) -> None:
    chain = honest(w, 1)
    f = rejected(w, birth(A, sensors), "malformed")
    assert f.detail == "bad sensor list"
    assert feed(w, birth(A), topic(A, "birth")).kind == "birth"  # a good one is kept
    assert len(snapshot(w)["births"]) == 1
    assert_chain_verifies(w, chain, 1)


@pytest.mark.parametrize(
    "entry",
    [{**SENSORS[0], "id": b"climate"}, {**SENSORS[0], 1: "x"}],
    ids=["bytes-id", "int-key"],
)
def test_birth_sensor_entry_json_cannot_hold(w: Worker, entry: dict[Any, Any]) -> None:
    honest(w, 1)
    f = rejected(w, birth(A, [entry]), "malformed")
    assert f.detail == "bad sensor list"


@pytest.mark.parametrize(
    "entry",
    [
        {"driver": "bme280", "quantities": ["temperature"], "interval": 60},
        {"id": "climate", "quantities": ["temperature"], "interval": 60},
        {**SENSORS[0], "extra": "key"},
    ],
    ids=["no-id", "no-driver", "extra-key"],
)
def test_birth_sensor_entry_must_have_the_spec_keys(w: Worker, entry: dict[str, Any]) -> None:
    honest(w, 1)
    rejected(w, birth(A, [entry]), "malformed")


@pytest.mark.parametrize("interval", [1e-300, 5e-324, 1e-17])
def test_birth_with_an_absurd_interval_does_not_stop_the_attestations(
    w: Worker, interval: float
) -> None:
    register(w, A, C)
    tiny = [{**SENSORS[0], "interval": interval}]
    f = feed(w, birth(A, tiny), topic(A, "birth"))
    assert f.kind in ("birth", "malformed")
    assert feed(w, birth(C), topic(C, "birth")).kind == "birth"
    for ident in (A, C):
        for x in mb.Chain(ident).take(2):
            assert feed(w, x.message, topic(ident)).kind == "valid"
    assert w.tick(now=END) == 2  # raises instead
    assert attestation(w, C)["score"] == pytest.approx(6 / 120)


def test_birth_from_another_signer_and_duplicated(w: Worker) -> None:
    register(w, A, C)
    rejected(w, mb.sign(A, mb.birth_payload(A, did=C.did), cose.TYP_BIRTH), "did-mismatch")
    assert feed(w, birth(A), topic(A, "birth")).kind == "birth"
    before = snapshot(w)
    assert feed(w, birth(A), topic(A, "birth")).kind == "birth"  # retained, sent again
    assert snapshot(w) == before


def test_model_bundle_on_the_batch_topic(w: Worker) -> None:
    chain = honest(w, 1)
    f = rejected(w, mb.model_bundle_message(A), "malformed")  # a registered signer: its count
    assert "model bundle" in f.detail
    rejected(w, mb.model_bundle_message(C), "malformed", under="")
    assert_chain_verifies(w, chain, 1)


def test_attestation_on_the_batch_topic(w: Worker) -> None:
    chain = honest(w, 2)
    before, counts = snapshot(w), registry.counts(w.db)
    other = mb.identity(bytes(range(1, 33)))  # another attestor, not a device
    f = feed(w, mb.sign(other, mb.attestation_payload(other, A), cose.TYP_ATTESTATION))
    assert (f.kind, f.forged, f.did) == ("attestation", False, other.did)
    assert (snapshot(w), registry.counts(w.db)) == (before, counts)  # nothing stored
    assert w.counts["attestation"] == 1
    # One the device "signed" for itself about another attestor: the did does not match.
    forged = mb.sign(A, mb.attestation_payload(other, A), cose.TYP_ATTESTATION)
    rejected(w, forged, "did-mismatch")
    # A batch on the attestation's key instead: just an unknown device.
    rejected(w, mb.sign(other, mb.batch_payload(other, 0, ZERO)), "unknown-device", under="")
    assert_chain_verifies(w, chain, 2)


def test_batch_under_another_devices_topic_keeps_its_verdict(w: Worker) -> None:
    register(w, A, C)
    b = mb.Chain(A).take(1)[0]
    f = feed(w, b.message, topic(C))
    assert (f.kind, f.did) == ("valid", A.did)
    assert (device(w, A)["batches"], device(w, C)["batches"]) == (1, 0)


# --- limits the store cannot hold ----------------------------------------------------------------


@pytest.mark.parametrize("seq", [2**63, 2**64 - 1])
def test_seq_beyond_the_store_range(w: Worker, seq: int) -> None:
    chain = honest(w, 2)
    before = snapshot(w)["batches"]
    f = feed(w, mb.batch_at(A, seq, b"\x11" * 32))
    assert f.kind in ("gap", "malformed"), format_finding(f)
    assert set(before) <= set(snapshot(w)["batches"])
    assert feed(w, chain.take(3)[2].message).kind in ACCEPTED


def test_seq_at_the_edge_of_the_store_range(w: Worker) -> None:
    honest(w, 2)
    f = feed(w, mb.batch_at(A, 2**63 - 1, b"\x11" * 32))
    assert f.kind in ("gap", "malformed"), format_finding(f)


def test_absurd_sealed_time_does_not_stop_the_attestations(w: Worker) -> None:
    register(w, A, C)
    assert feed(w, mb.batch_at(A, 0, ZERO, sealed=-1e300)).kind == "valid"
    for x in mb.Chain(C).take(2):
        assert feed(w, x.message, topic(C)).kind == "valid"
    w.tick(now=END)
    assert attestation(w, C)["verified"] == 6


# --- properties: nothing that arrives changes the honest chain ----------------------------------


def _examples(store: str, sqlite: int, postgresql: int) -> int:
    return postgresql if "://" in store else sqlite


def test_honest_batches_in_any_order_form_the_whole_chain(w: Worker, store: str) -> None:
    """Every delivery order, with repeats, of an honest chain: nothing forged, the chain
    complete afterwards (a new device each example, all in one store)."""
    seeds = iter(range(1_000_000))

    @settings(max_examples=_examples(store, 60, 30), deadline=None, database=None)
    @given(st.permutations(range(5)), st.lists(st.integers(0, 4), max_size=3))
    def prop(order: list[int], repeats: list[int]) -> None:
        ident = mb.identity(next(seeds).to_bytes(32, "big"))
        register(w, ident)
        chain = mb.Chain(ident)
        b = chain.take(5)
        found = [feed(w, b[i].message, topic(ident)) for i in [*order, *repeats]]
        assert not any(f.forged for f in found), [format_finding(f) for f in found]
        assert [f.kind for f in found].count("duplicate") == len(repeats)
        dev = device(w, ident)
        assert (dev["last_seq"], dev["batches"], dev["readings"], dev["evidence"]) == (4, 5, 15, 0)
        assert_chain_verifies(w, chain, 5)

    prop()


def _unchanged(w: Worker, before: dict[str, list[tuple[Any, ...]]], counted: int) -> None:
    assert snapshot(w) == before
    assert total(registry.counts(w.db)) == counted + 1


def test_random_bytes_never_raise_or_change_the_store(w: Worker, store: str) -> None:
    chain = honest(w, 3)
    before = snapshot(w)

    @settings(max_examples=_examples(store, 300, 150), deadline=None, database=None)
    @given(st.binary(max_size=300))
    def prop(data: bytes) -> None:
        counted = total(registry.counts(w.db))
        f = feed(w, data)
        assert f.forged, format_finding(f)
        _unchanged(w, before, counted)

    prop()
    assert_chain_verifies(w, chain, 3)


def _mutate(message: bytes, how: str, spots: list[int], byte: int) -> bytes:
    m = bytearray(message)
    if how == "flip":
        for bit in spots:
            i = bit % (len(m) * 8)
            m[i // 8] ^= 1 << (i % 8)
    elif how == "truncate":
        m = m[: spots[0] % len(m)]
    elif how == "delete":
        del m[spots[0] % len(m)]
    else:
        m.insert(spots[0] % (len(m) + 1), byte)
    return bytes(m)


def test_mutated_batches_never_raise_or_change_the_store(w: Worker, store: str) -> None:
    chain = honest(w, 3)
    extra = chain.take(5)[3:]  # unseen honest batches (seq 3 extends, seq 4 would be a gap)
    sources = chain.built[:3] + extra
    before = snapshot(w)

    @settings(max_examples=_examples(store, 400, 200), deadline=None, database=None)
    @given(
        st.sampled_from(sources),
        st.sampled_from(["flip", "truncate", "delete", "insert"]),
        st.lists(st.integers(0, 100_000), min_size=1, max_size=4),
        st.integers(0, 255),
    )
    def prop(built: mb.Built, how: str, spots: list[int], byte: int) -> None:
        counted = total(registry.counts(w.db))
        mutant = _mutate(built.message, how, spots, byte)
        assume(mutant != built.message or built.seq < 3)  # an unseen honest batch is welcome
        f = feed(w, mutant)
        if mutant == built.message and built.seq < 3:
            assert f.kind == "duplicate"
        assert f.kind not in STORE_ACCEPTS, format_finding(f)
        _unchanged(w, before, counted)

    prop()
    assert_chain_verifies(w, chain, 3)
    assert [feed(w, x.message).kind for x in extra] == ["valid", "valid"]
    assert_chain_verifies(w, chain, 5)
