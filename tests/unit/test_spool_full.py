"""A write refused for want of space is recognised as such, from the error that caused it, also
when a failed ROLLBACK was raised on top of it; the spool keeps what was durable, the commit
buffer holds the readings (within its cap, the oldest given up with a signed receipt) and stores
them once the disk takes writes again.

SQLite's own `max_page_count` gives a real SQLITE_FULL here, from the real library; the tests on
a real full file system are in tests/system/test_full_disk.py."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.core.health import Health
from gateway.core.reading import Reading
from gateway.device import commit as commit_module
from gateway.device.commit import DROP_WHY_DISK_FULL, CommitBuffer
from gateway.device.disk_full import DiskFull, disk_full
from gateway.device.seal import SealedBatch
from gateway.device.spool import Spool
from gateway.device.spool_service import Refusals
from gateway.wire import cose, payloads
from tests.spools import T0, decode, make_spool, recs


def _batch_id(message: bytes) -> bytes:
    return hashlib.sha256(cose.verify1(message).payload).digest()


def _cap(spool: Spool) -> None:
    """No page more than the spool has now: the next write that needs one is refused."""
    assert spool.conn is not None
    pages = spool.conn.execute("PRAGMA page_count").fetchone()[0]
    spool.conn.execute(f"PRAGMA max_page_count = {pages}")


def _uncap(spool: Spool) -> None:
    assert spool.conn is not None
    spool.conn.execute("PRAGMA max_page_count = 1073741823")


def _real_sqlite_full(tmp_path: Path) -> sqlite3.Error:
    db = sqlite3.connect(tmp_path / "full.db", isolation_level=None)
    db.execute("CREATE TABLE t (x BLOB)")
    db.execute("PRAGMA max_page_count = 2")
    try:
        db.execute("INSERT INTO t VALUES (zeroblob(100000))")
    except sqlite3.Error as e:
        return e
    finally:
        db.close()
    raise AssertionError("SQLite took a write past max_page_count")


def test_sqlite_full_and_enospc_are_a_full_disk(tmp_path: Path) -> None:
    full = _real_sqlite_full(tmp_path)
    assert full.sqlite_errorcode == sqlite3.SQLITE_FULL
    assert disk_full(full)
    assert disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))


def test_other_errors_are_not_a_full_disk(tmp_path: Path) -> None:
    assert not disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not disk_full(OSError(errno.EIO, "Input/output error"))
    assert not disk_full(sqlite3.OperationalError("no such table: readings"))
    assert not disk_full(sqlite3.DatabaseError("file is not a database"))
    assert not disk_full(ValueError("database or disk is fine"))


def test_the_masked_rollback_is_classified_by_the_error_under_it(tmp_path: Path) -> None:
    """A COMMIT that failed for want of space, then a ROLLBACK that failed because SQLite had
    already rolled back: what propagates is the second error, which says nothing of space."""
    full = _real_sqlite_full(tmp_path)
    db = sqlite3.connect(":memory:", isolation_level=None)
    masked: BaseException | None = None
    try:
        try:
            raise full
        except sqlite3.Error:
            db.execute("ROLLBACK")
    except sqlite3.Error as e:
        masked = e
    assert masked is not None
    assert "cannot rollback - no transaction is active" in str(masked)
    assert disk_full(masked)
    # Raised "from None" (as SpoolError messages are) the original is still what counts.
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("cannot lock spool.lock") from None
    except RuntimeError as e:
        assert disk_full(e)


def test_a_refused_commit_changes_nothing_and_the_same_commit_goes_through_later(
    tmp_path: Path,
) -> None:
    s = make_spool(tmp_path / "spool.db", batch_max_readings=10)
    try:
        first = s.commit(recs(10))
        assert [b.seq for b in first.sealed] == [0]
        before = s.stats()
        _cap(s)
        with pytest.raises(DiskFull) as raised:
            s.commit(recs(200, start=10), acked=[0])
        # The error that counts, not "cannot rollback".
        assert raised.value.path == s.path
        assert "database or disk is full" in str(raised.value.cause)
        assert s.stats() == before
        assert [b.seq for b in s.unacked()] == [0]
        _uncap(s)
        again = s.commit(recs(200, start=10), acked=[0])
        # seq 1 was signed inside the refused transaction and never left it: it is sealed now,
        # once, right after seq 0.
        assert [b.seq for b in again.sealed][:1] == [1]
        assert decode(again.sealed[0].message).prev == _batch_id(first.sealed[0].message)
    finally:
        s.close()


class _Outbox:
    def __init__(self) -> None:
        self.batches: list[SealedBatch] = []

    def offer(self, batch: SealedBatch) -> None:
        self.batches.append(batch)


def _readings(n: int, start: int = 0) -> list[Reading]:
    return [
        Reading("c", "temperature", "Cel", 20.0, T0 + i, True, 0.0, [])
        for i in range(start, start + n)
    ]


def _buffer(spool: Spool, health: Health, outbox: _Outbox) -> CommitBuffer:
    return CommitBuffer(
        spool,
        executor=ThreadPoolExecutor(1),
        health=health,
        commit_interval=60.0,
        batch_max_readings=10,
        clock_source=lambda: "ntp",
        outbox=outbox,
    )


def test_the_commit_buffer_holds_readings_while_the_disk_is_full_and_stores_them_after(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = make_spool(tmp_path / "spool.db", batch_max_readings=10, seal_ahead=100)
    s.held = False
    health, outbox = Health(), _Outbox()
    buf = _buffer(s, health, outbox)
    caplog.set_level(logging.INFO)

    async def go() -> None:
        buf.accept(_readings(5))
        await buf.commit()
        _cap(s)
        for i in range(3):
            buf.accept(_readings(100, start=5 + 100 * i))
            result = await buf.commit()
            assert result.durable == 0
        assert health.disk_full
        assert health.writes_refused == 3
        assert buf.buffered == 300
        _uncap(s)
        result = await buf.commit(force_seal=True)
        assert result.durable == 300
        assert not health.disk_full

    asyncio.run(go())
    try:
        full = [r.getMessage() for r in caplog.records if "disk full:" in r.getMessage()]
        # Said once, with what is refused and the error under it, not at every refusal.
        assert len(full) == 1, full
        assert f"disk full: {s.path}, 1 write refused; 100 readings held in memory" in full[0]
        assert "database or disk is full" in full[0]
        assert any("disk full no more" in r.getMessage() for r in caplog.records)
        times = [float(r[payloads.T]) for b in outbox.batches for r in decode(b.message).records]
        assert times == [T0 + i for i in range(305)]
        assert health.readings == 305
    finally:
        s.close()


def test_past_the_cap_the_oldest_held_readings_go_with_a_signed_receipt(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(commit_module, "HELD_MAX", 50)
    s = make_spool(tmp_path / "spool.db", batch_max_readings=10, seal_ahead=100)
    s.held = False
    health, outbox = Health(), _Outbox()
    buf = _buffer(s, health, outbox)

    stored = 0

    async def go() -> None:
        nonlocal stored
        _cap(s)
        t = 0
        while not health.disk_full:  # until the spool's last free page is taken
            buf.accept(_readings(10, start=t))
            t += 10
            await buf.commit()
        stored = health.readings
        buf.accept(_readings(200 - t, start=t))
        await buf.commit()
        assert buf.buffered == 50
        assert health.readings_dropped == 150 - stored
        _uncap(s)
        await buf.commit(force_seal=True)

    asyncio.run(go())
    try:
        batches = [decode(b.message) for b in outbox.batches]
        times = [float(r[payloads.T]) for b in batches for r in b.records]
        assert times == [T0 + i for i in range(stored)] + [T0 + i for i in range(150, 200)]
        with_receipt = [b.dropped for b in batches if b.dropped]
        assert with_receipt == [
            [{"n": 150 - stored, "from": T0 + stored, "to": T0 + 149, "why": DROP_WHY_DISK_FULL}]
        ]
    finally:
        s.close()


def test_a_module_switch_on_a_full_disk_is_refused_not_half_done(tmp_path: Path) -> None:
    s = make_spool(tmp_path / "spool.db")
    s.held = False
    buf = _buffer(s, Health(), _Outbox())
    switched: list[bool] = []

    async def go() -> None:
        buf.accept(_readings(300))
        _cap(s)
        with pytest.raises(DiskFull):
            await buf.commit(seal_all=True, then=lambda: switched.append(True))
        assert buf.buffered == 300

    asyncio.run(go())
    s.close()
    assert switched == []


def test_waiting_at_start_is_said_and_ends_by_itself(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    health = Health()
    refusals = Refusals(health)
    caplog.set_level(logging.INFO)
    e = DiskFull(tmp_path / "spool.db", OSError(errno.ENOSPC, "No space left on device"))
    delays = [refusals.refused(e, held="waiting") for _ in range(8)]
    assert delays == sorted(delays) and delays[0] >= 1.0 and delays[-1] <= 10.0
    assert health.disk_full and health.writes_refused == 8
    refusals.stored("going on")
    assert not health.disk_full and health.writes_refused == 8
    lines = [r.getMessage() for r in caplog.records]
    assert sum("disk full:" in x for x in lines) == 1
    assert sum("disk full no more" in x for x in lines) == 1
