"""A spool that goes back in time or is replaced never makes the gateway sign a seq twice.

Real SQLite files: a spool's files are copied at one moment (what a rolled-back WAL, a deleted
-wal or an old backup leave) and put back after more batches were sealed, or moved away. A
"broker" here is the list of every batch the spool handed out; `verify` checks all of it.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import sqlite3
from pathlib import Path

import pytest

from gateway.core.errors import SpoolError
from gateway.device.highwater import HighWater
from gateway.device.spool import CommitResult, Spool
from gateway.wire import cose, payloads
from gateway.wire.verify import Finding, Verifier
from tests.spools import T0, decode, ident, make_spool, recs


def batch_id(message: bytes) -> bytes:
    return hashlib.sha256(cose.verify1(message).payload).digest()


class Device:
    """A spool and everything it handed to the uplink, in order."""

    def __init__(self, path: Path, **kw: object) -> None:
        self.path = path
        self.kw = kw
        self.published: list[bytes] = []
        self.n = 0
        self.spool = self.open()

    def open(self) -> Spool:
        s = make_spool(self.path, **self.kw)
        self.published += [m for _, m, _ in s.unacked()]  # re-published after a start
        return s

    def seal(self, batches: int, *, acked: list[int] | None = None) -> CommitResult:
        res = self.spool.commit(recs(10 * batches, self.n), acked or [], now=T0 + self.n)
        self.n += 10 * batches
        self.published += [m for _, m, _ in res.sealed]
        return res

    def restart(self) -> None:
        self.spool.close()
        self.spool = self.open()

    def snapshot(self, to: Path) -> None:
        """The spool's files as they are now (between two commits: a consistent state)."""
        to.mkdir()
        for name in (self.path.name, self.path.name + "-wal"):
            if (self.path.parent / name).exists():
                shutil.copy2(self.path.parent / name, to / name)

    def put_back(self, snap: Path, *, wal: bool = True) -> None:
        """The spool's files as they were at the snapshot (without the -wal: a deleted one)."""
        self.spool.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        shutil.copy2(snap / self.path.name, self.path)
        if wal and (snap / (self.path.name + "-wal")).exists():
            shutil.copy2(snap / (self.path.name + "-wal"), f"{self.path}-wal")
        self.spool = self.open()

    def findings(self, order: list[bytes] | None = None) -> list[Finding]:
        v = Verifier()
        return [v.check(m) for m in (self.published if order is None else order)]


def receipts(message: bytes) -> list[dict[str, object]]:
    return decode(message).dropped


def test_rolled_back_spool_goes_on_after_the_last_seq_and_states_what_was_lost(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = Device(tmp_path / "spool.db")
    d.seal(3)  # seqs 0-2
    d.seal(1, acked=[0, 1, 2])  # seq 3; 0-2 acknowledged
    d.snapshot(tmp_path / "then")
    lost = d.seal(2).sealed + d.seal(1).sealed  # seqs 4-6 never reach the broker
    delivered = d.published[: -len(lost)]
    d.put_back(tmp_path / "then")  # a rolled-back WAL: the spool is at seq 4 again
    assert "spool-rolled-back" in caplog.text
    res = d.seal(1)
    (seq, message, _), *_ = res.sealed
    assert seq == 7 and decode(message).prev == batch_id(lost[-1][1])
    assert receipts(message) == [
        {"n": 30, "from": T0 + 40, "to": T0 + 60, "why": "spool-rolled-back seq 4-6"}
    ]
    # What a verifier that never got 4-6 says: a gap, with the device's reason.
    found = d.findings([*delivered, message])
    assert [f.kind for f in found] == ["valid"] * 4 + ["gap"]
    assert found[-1].detail == "seq 4-6 missing: spool-rolled-back (stated by the device)"
    # One that got them: the chain links, nothing is forged, no seq has two batches.
    assert not [f for f in d.findings(delivered + [m for _, m, _ in lost] + [message]) if f.forged]


def test_pending_readings_sealed_into_lost_batches_are_not_signed_again(tmp_path: Path) -> None:
    d = Device(tmp_path / "spool.db", seal_ahead=1)
    d.seal(1)  # seq 0
    d.seal(3)  # no room: 30 readings wait as pending rows
    d.snapshot(tmp_path / "then")
    d.seal(0, acked=[0])  # seq 1 takes 10 of them
    d.seal(0, acked=[1])  # seq 2 the next 10
    d.put_back(tmp_path / "then")
    assert d.spool.stats().pending == 10  # the 20 already in batches 1 and 2 are gone
    d.seal(0, acked=[0])
    times = [
        r[payloads.T] for m in d.published for r in decode(m).records
    ]  # every reading signed at most once
    assert len(times) == len(set(times)) == 40


def test_replaced_spool_goes_on_and_states_the_unacknowledged_batches(tmp_path: Path) -> None:
    d = Device(tmp_path / "spool.db")
    d.seal(2)  # 0-1
    d.seal(2, acked=[0])  # 2-3; 1, 2, 3 not acknowledged
    d.spool.close()
    aside = tmp_path / "aside"
    aside.mkdir()
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{d.path}{suffix}").exists():
            shutil.move(f"{d.path}{suffix}", aside)
    d.spool = d.open()
    (seq, message, _), *_ = d.seal(1).sealed
    assert seq == 4
    assert [r["why"] for r in receipts(message)] == ["spool-replaced seq 1-3"]
    assert receipts(message)[0]["n"] == 30
    found = d.findings()
    assert not [f for f in found if f.forged]


def test_nothing_unacknowledged_nothing_stated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    d = Device(tmp_path / "spool.db")
    d.seal(2)
    d.seal(0, acked=[0, 1])  # the record now knows both were acknowledged
    d.spool.close()
    d.path.unlink()
    d.spool = d.open()
    assert "lost and maybe never delivered: none" in caplog.text
    (seq, message, _), *_ = d.seal(1).sealed
    assert seq == 2 and receipts(message) == []
    assert [f.kind for f in d.findings()] == ["valid"] * 3


def test_deleted_wal_counts_as_rolled_back(tmp_path: Path) -> None:
    d = Device(tmp_path / "spool.db")
    d.snapshot(tmp_path / "created")  # the spool's own file, before any batch
    d.seal(2)
    d.put_back(tmp_path / "created", wal=False)
    (seq, message, _), *_ = d.seal(1).sealed
    assert seq == 2
    assert [r["why"] for r in receipts(message)] == ["spool-rolled-back seq 0-1"]


def test_statement_whose_batch_was_lost_too_is_made_again(tmp_path: Path) -> None:
    d = Device(tmp_path / "spool.db")
    d.seal(1)  # 0
    d.snapshot(tmp_path / "first")
    d.seal(2)  # 1-2, lost below
    d.put_back(tmp_path / "first")
    d.snapshot(tmp_path / "second")  # after taking the chain up, before stating the loss
    d.seal(1)  # 3 states "1-2", and is lost in turn
    d.put_back(tmp_path / "second")
    (seq, message, _), *_ = d.seal(1).sealed
    assert seq == 4
    assert [r["why"] for r in receipts(message)] == [
        "spool-rolled-back seq 1-2",
        "spool-rolled-back seq 3",
    ]
    found = d.findings([d.published[0], message])
    assert found[-1].detail == "seq 1-3 missing: spool-rolled-back (stated by the device)"


def test_a_batch_is_handed_out_only_once_the_chain_record_holds_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    d = Device(tmp_path / "spool.db")
    d.seal(1)
    real = HighWater.write

    def full_disk(self: HighWater, rec: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(HighWater, "write", full_disk)
    assert d.seal(2).sealed == []  # sealed and durable, but kept from the uplink
    assert [q for q, _, _ in d.spool.unacked()] == [0]
    assert "held back from the broker" in caplog.text
    monkeypatch.setattr(HighWater, "write", real)
    assert [q for q, _, _ in d.seal(0).sealed] == [1, 2]  # the next commit hands them over
    assert [q for q, _, _ in d.spool.unacked()] == [0, 1, 2]


def test_spool_ahead_of_its_record_after_a_crash_is_trusted(tmp_path: Path) -> None:
    """A power cut between a commit and its record: the spool holds batches the record does
    not; they never left, so the spool is right and the record is brought up to it."""
    d = Device(tmp_path / "spool.db")
    d.seal(1)
    record = d.spool.chain.path.read_bytes()
    d.seal(2)
    d.spool.close()
    d.spool.chain.path.write_bytes(record)
    d.spool = d.open()
    assert [q for q, _, _ in d.spool.unacked()] == [0, 1, 2]
    (seq, message, _), *_ = d.seal(1).sealed
    assert seq == 3 and receipts(message) == []


def test_spool_made_before_chain_records_is_taken_over(tmp_path: Path) -> None:
    d = Device(tmp_path / "spool.db")
    d.seal(2)
    d.spool.close()
    d.spool.chain.path.unlink()
    with sqlite3.connect(d.path) as db:  # as the version before wrote it
        db.execute("DELETE FROM meta WHERE key IN ('spool_id', 'taken')")
    db.close()
    d.spool = d.open()
    rec = HighWater(d.spool.chain.path).read(ident().did)
    assert rec is not None and rec.seq == 1  # recorded at once, before anything is published
    assert [q for q, _, _ in d.spool.unacked()] == [0, 1]
    assert d.seal(1).sealed[0][0] == 2


def test_foreign_spool_is_refused_untouched(tmp_path: Path) -> None:
    d = Device(tmp_path / "spool.db", identity=ident(9))
    d.seal(1)
    d.spool.close()
    with sqlite3.connect(d.path) as db:  # one made before spools had an id
        db.execute("DELETE FROM meta WHERE key IN ('spool_id', 'taken')")
    db.close()
    before = d.path.read_bytes()
    with pytest.raises(SpoolError, match="belongs to"):
        make_spool(d.path)
    assert d.path.read_bytes() == before


def test_corrupt_chain_record_stops_the_start_and_names_the_file(tmp_path: Path) -> None:
    d = Device(tmp_path / "spool.db")
    d.seal(1)
    d.spool.close()
    chain = d.spool.chain.path
    data = bytearray(chain.read_bytes())
    half = len(data) // 2
    for i in (10, half + 10):
        data[i] ^= 0x20
    chain.write_bytes(bytes(data))
    before = d.path.read_bytes()
    with pytest.raises(SpoolError, match="holds no valid record") as e:
        make_spool(d.path)
    assert str(chain) in str(e.value) and "backup" in str(e.value)
    assert e.value.exit_code == 4
    assert d.path.read_bytes() == before
    chain.write_bytes(b"")
    with pytest.raises(SpoolError, match="not two equal slots"):
        make_spool(d.path)


def test_a_torn_write_leaves_the_record_before(tmp_path: Path) -> None:
    d = Device(tmp_path / "spool.db")
    d.seal(1)
    d.seal(1)  # seq 1: the newer slot
    d.spool.close()
    chain = d.spool.chain.path
    data = bytearray(chain.read_bytes())
    newer = 0 if b'"seq":1' in data[: len(data) // 2] else len(data) // 2
    data[newer + 40 : newer + 200] = b"\0" * 160  # half written when the power went
    chain.write_bytes(bytes(data))
    rec = HighWater(chain).read(ident().did)
    assert rec is not None and rec.seq == 0  # the one before; the spool is ahead of it
    d.spool = d.open()
    assert d.seal(1).sealed[0][0] == 2


def test_a_record_bigger_than_its_slot_moves_to_bigger_slots(tmp_path: Path) -> None:
    """Many batches waiting for the broker (a large max_inflight): the record outgrows the
    page it normally takes, and is written whole into a new file with bigger slots."""
    d = Device(tmp_path / "spool.db", seal_ahead=200)
    d.seal(1)
    assert d.spool.chain.path.stat().st_size == 4096
    d.seal(120)
    assert d.spool.chain.path.stat().st_size > 4096
    rec = HighWater(d.spool.chain.path).read(ident().did)
    assert rec is not None and rec.seq == 120 and len(rec.unacked) == 121
    d.seal(1)  # and goes on in place
    rec = HighWater(d.spool.chain.path).read(ident().did)
    assert rec is not None and rec.seq == 121


def test_record_of_another_device_is_ignored_and_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    other = Device(tmp_path / "a" / "spool.db", identity=ident(9))
    other.seal(3)
    other.spool.close()
    mine = tmp_path / "b" / "spool.db"
    mine.parent.mkdir()
    shutil.copy(other.spool.chain.path, mine.parent / "spool.chain")
    d = Device(mine)
    assert "belongs to" in caplog.text
    assert d.seal(1).sealed[0][0] == 0
    rec = HighWater(mine.parent / "spool.chain").read(ident().did)
    assert rec is not None and rec.seq == 0


def test_a_wal_without_its_spool_is_not_thrown_away(tmp_path: Path) -> None:
    d = Device(tmp_path / "spool.db")
    d.seal(1)
    d.snapshot(tmp_path / "then")
    d.spool.close()
    d.path.unlink()  # "moved aside", but its -wal left behind (as a kill -9 leaves it)
    Path(f"{d.path}-wal").write_bytes((tmp_path / "then" / "spool.db-wal").read_bytes())
    with pytest.raises(SpoolError, match="without its spool"):
        make_spool(d.path)
    assert Path(f"{d.path}-wal").exists()


def test_corrupt_spool_advice_is_safe_to_follow(tmp_path: Path) -> None:
    """The message says to move the spool aside: doing exactly that continues the chain."""
    d = Device(tmp_path / "spool.db")
    d.seal(2)
    d.spool.close()
    d.path.write_bytes(b"\0" * 4096 + b"garbage" * 1000)
    with pytest.raises(SpoolError) as e:
        make_spool(d.path)
    assert "mv " in str(e.value) and "spool.chain" in str(e.value)
    aside = tmp_path / "aside"
    aside.mkdir()
    for suffix in ("", "-wal", "-shm"):
        if Path(f"{d.path}{suffix}").exists():
            shutil.move(f"{d.path}{suffix}", aside)
    d.spool = d.open()
    (seq, message, _), *_ = d.seal(1).sealed
    assert seq == 2 and receipts(message)[0]["why"] == "spool-replaced seq 0-1"
    assert not [f for f in d.findings() if f.forged]


def test_loss_is_logged_as_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING)
    d = Device(tmp_path / "spool.db")
    d.seal(1)
    d.spool.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{d.path}{suffix}").unlink(missing_ok=True)
    d.spool = d.open()
    (w,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "spool-replaced" in w.getMessage() and "seq 1 after batch" in w.getMessage()
