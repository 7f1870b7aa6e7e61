"""The spool on real SQLite files: sealing per spec, seq across restarts, the cap, corruption."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from gateway.core.errors import SpoolError
from gateway.wire import cose, payloads
from tests.spools import T0, decode, ident, make_spool, recs


def test_full_batches_are_sealed_per_spec_and_chained(tmp_path: Path) -> None:
    s = make_spool(tmp_path / "s.db")
    res = s.commit(recs(25), now=T0 + 30)
    assert [seq for seq, _, _ in res.sealed] == [0, 1]  # two full batches, 5 left pending
    b0, b1 = (decode(m) for _, m, _ in res.sealed)
    assert b0.prev == bytes(32)
    assert b1.prev == hashlib.sha256(cose.verify1(res.sealed[0][1]).payload).digest()
    assert len(b0.records) == 10 and b0.records[0][payloads.T] == T0
    assert s.stats().pending == 5
    # Age seals the rest even though the batch is not full.
    res = s.commit([], now=T0 + 20 + 61)
    assert [(seq, n) for seq, _, n in res.sealed] == [(2, 5)]


def test_seq_survives_reopen_and_unacked_are_kept_byte_for_byte(tmp_path: Path) -> None:
    s = make_spool(tmp_path / "s.db")
    sealed = s.commit(recs(20), now=T0 + 30).sealed
    s.close()
    s = make_spool(tmp_path / "s.db")
    assert [(q, m) for q, m, _ in s.unacked()] == [(q, m) for q, m, _ in sealed]
    s.commit([], acked=[0, 1], now=T0 + 31)
    assert s.unacked() == []
    nxt = s.commit(recs(10, 20), now=T0 + 40).sealed
    assert [q for q, _, _ in nxt] == [2]
    assert decode(nxt[0][1]).prev == hashlib.sha256(cose.verify1(sealed[1][1]).payload).digest()


def test_seal_ahead_limits_sealed_batches_while_broker_is_away(tmp_path: Path) -> None:
    s = make_spool(tmp_path / "s.db", seal_ahead=2)
    res = s.commit(recs(50), now=T0 + 100)
    assert len(res.sealed) == 2
    assert s.stats().pending == 30
    res = s.commit([], acked=[0], now=T0 + 101)
    assert [q for q, _, _ in res.sealed] == [2]


def test_clock_state_is_never_mixed_in_one_batch(tmp_path: Path) -> None:
    s = make_spool(tmp_path / "s.db")
    res = s.commit(recs(4, synced=False) + recs(8, 4, synced=True), now=T0 + 100)
    got = [decode(m) for _, m, _ in res.sealed]
    assert [(b.clock["synced"], len(b.records)) for b in got] == [(False, 4), (True, 8)]


def test_cap_drops_oldest_with_a_signed_receipt(tmp_path: Path) -> None:
    s = make_spool(tmp_path / "s.db", max_size=96 * 1024, seal_ahead=1, batch_max_readings=50)
    for k in range(40):
        s.commit(recs(100, 1000 + k * 100), now=T0)  # no age: nothing due but the first batch
    st = s.stats()
    assert st.used_bytes <= 96 * 1024
    # The broker acknowledges batch 0: room to seal one more, which carries the receipt.
    res = s.commit([], acked=[0], now=T0 + 10_000)
    b = decode(res.sealed[0][1])
    assert b.dropped and b.dropped[0]["why"] == "spool-full"
    dropped = sum(d["n"] for d in b.dropped)
    assert dropped > 1000
    # The oldest went first: the receipt starts at the first unsealed reading's time.
    assert b.dropped[0]["from"] == T0 + 1050
    # What is left follows right after what was dropped.
    assert b.records[0][payloads.T] == b.dropped[-1]["to"] + 1


def test_corrupt_spool_is_reported_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(b"this is not a database" * 100)
    before = path.read_bytes()
    with pytest.raises(SpoolError, match="corrupt or not an SQLite database"):
        make_spool(path)
    assert path.read_bytes() == before


def test_spool_of_another_device_is_refused(tmp_path: Path) -> None:
    make_spool(tmp_path / "s.db").close()
    with pytest.raises(SpoolError, match="belongs to"):
        make_spool(tmp_path / "s.db", identity=ident(9))
