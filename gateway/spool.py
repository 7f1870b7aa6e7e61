"""The durable spool: pending readings and sealed, unacknowledged batches in one SQLite file.

Decisions (docs/spool.md has the full story):
- A reading counts as read only once a commit holding it has returned: either as a pending row
  or already sealed inside a batch. At full speed most readings are sealed in the same commit
  that makes them durable, so they are written once, as part of a batch.
- A batch is sealed (seq, prev, root, signature) and stored in the same transaction that moves
  `next_seq` and `prev` forward, so seq never repeats or skips, whatever moment power fails.
- Sealed batches are published byte for byte as stored, and deleted only after the broker's
  PUBACK (lazily, in a later commit: a crash in between re-publishes a duplicate, which
  verifiers accept idempotently).
- Only a few batches are sealed ahead of the uplink (`seal_ahead`); while the broker is away,
  readings wait as pending rows, so the size cap can drop the oldest readings individually and
  the chain itself never has a hole. Drops are recorded and signed into the next batch.
"""

from __future__ import annotations

import hashlib
import math
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import sqlite_utils

from gateway import cose, payloads
from gateway.errors import SpoolError
from gateway.identity import Identity

FORMAT = 1
DROP_WHY_FULL = "spool-full"


@dataclass(frozen=True, slots=True)
class PendingRecord:
    t: float
    synced: bool
    source: str
    record: bytes  # the SenML record exactly as it will appear in the batch


@dataclass
class CommitResult:
    durable: int = 0
    sealed: list[tuple[int, bytes, int]] = field(default_factory=list)  # (seq, message, n)
    dropped: int = 0


@dataclass(frozen=True)
class SpoolStats:
    pending: int
    oldest_pending: float | None
    sealed: int
    sealed_readings: int
    oldest_sealed: float | None
    next_seq: int
    used_bytes: int


class Spool:
    def __init__(
        self,
        path: Path,
        *,
        identity: Identity,
        boot: bytes,
        max_size: int,
        batch_max_readings: int,
        batch_max_age: float,
        seal_ahead: int,
        modules: Callable[[], list[tuple[str, str, bytes]]],
    ) -> None:
        self.path = path
        self.identity = identity
        self.boot = boot
        self.max_size = max_size
        self.batch_max_readings = batch_max_readings
        self.batch_max_age = batch_max_age
        self.seal_ahead = seal_ahead
        self.modules = modules
        self.conn: sqlite3.Connection | None = None
        # Caches of what the file holds, kept exact by this object (the only writer).
        self._pending = 0
        self._oldest_pending: float | None = None
        self._sealed = 0
        self._next_seq = 0
        self._prev = payloads.ZERO_PREV
        self._page_size = 4096

    # --- opening ------------------------------------------------------------------------------

    def open(self) -> None:
        existed = self.path.exists() and self.path.stat().st_size > 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (sqlite3.Error, OSError) as e:
            raise SpoolError(f"spool {self.path} cannot be opened: {e}") from None
        try:
            self._prepare(conn, existed)
        except sqlite3.DatabaseError as e:
            conn.close()
            raise SpoolError(
                f"spool {self.path} is corrupt or not an SQLite database ({e}); it was left "
                f"untouched: move it aside to start a new spool, or inspect it with "
                f"`sqlite3 {self.path} .recover`"
            ) from None
        except SpoolError:
            conn.close()
            raise
        self.conn = conn

    def _prepare(self, conn: sqlite3.Connection, existed: bool) -> None:
        if existed:
            row = conn.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise SpoolError(
                    f"spool {self.path} failed SQLite's integrity check ({row and row[0]}); it "
                    f"was left untouched: move it aside to start a new spool"
                )
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: in WAL mode this fsyncs the log at every commit, which is what makes a commit
        # survive a power cut (NORMAL only survives a process crash).
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA journal_size_limit=4194304")
        self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        db = sqlite_utils.Database(conn)
        tables = set(db.table_names())
        if existed and tables and "meta" not in tables:
            raise SpoolError(f"spool {self.path} is an SQLite file but not a depin-gateway spool")
        if "meta" not in tables:
            conn.execute("BEGIN IMMEDIATE")
            db.table("meta").create({"key": str, "value": str}, pk="key")
            db.table("readings").create(
                {"id": int, "t": float, "synced": int, "source": str, "record": bytes}, pk="id"
            )
            db.table("batches").create(
                {
                    "seq": int,
                    "batch_id": bytes,
                    "sealed": float,
                    "n": int,
                    "first_t": float,
                    "message": bytes,
                },
                pk="seq",
            )
            db.table("drops").create(
                {"id": int, "n": int, "t_from": float, "t_to": float, "why": str}, pk="id"
            )
            conn.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?)",
                [
                    ("format", str(FORMAT)),
                    ("did", self.identity.did),
                    ("next_seq", "0"),
                    ("prev", payloads.ZERO_PREV.hex()),
                    ("created", repr(time.time())),
                ],
            )
            conn.execute("COMMIT")
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("format") != str(FORMAT):
            raise SpoolError(f"spool {self.path} has format {meta.get('format')}, not {FORMAT}")
        if meta.get("did") != self.identity.did:
            raise SpoolError(
                f"spool {self.path} belongs to {meta.get('did')}, not to this device's key "
                f"{self.identity.did}; a spool never changes hands (its chain is signed)"
            )
        self._next_seq = int(meta["next_seq"])
        self._prev = bytes.fromhex(meta["prev"])
        self._pending, self._oldest_pending = conn.execute(
            "SELECT count(*), min(t) FROM readings"
        ).fetchone()
        self._sealed = conn.execute("SELECT count(*) FROM batches").fetchone()[0]

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def _db(self) -> sqlite3.Connection:
        if self.conn is None:
            raise SpoolError("spool is not open")
        return self.conn

    # --- reading ------------------------------------------------------------------------------

    def unacked(self) -> list[tuple[int, bytes, int]]:
        """Sealed batches not yet acknowledged, oldest first, exactly as stored."""
        return self._db().execute("SELECT seq, message, n FROM batches ORDER BY seq").fetchall()

    def stats(self) -> SpoolStats:
        db = self._db()
        sealed, sealed_n, oldest_sealed = db.execute(
            "SELECT count(*), coalesce(sum(n), 0), min(first_t) FROM batches"
        ).fetchone()
        return SpoolStats(
            pending=self._pending,
            oldest_pending=self._oldest_pending,
            sealed=sealed,
            sealed_readings=sealed_n,
            oldest_sealed=oldest_sealed,
            next_seq=self._next_seq,
            used_bytes=self._used_bytes(),
        )

    def due(self, now: float, horizon: float = 0.0) -> bool:
        """Whether pending rows are waiting to be sealed and there is room to seal them."""
        oldest = self._oldest_pending
        return (
            self._pending > 0
            and self._sealed < self.seal_ahead
            and (
                self._pending >= self.batch_max_readings
                or (oldest is not None and now - oldest + horizon >= self.batch_max_age)
            )
        )

    def first_unacked_seq(self) -> int:
        row = self._db().execute("SELECT min(seq) FROM batches").fetchone()
        return self._next_seq if row[0] is None else int(row[0])

    def _used_bytes(self) -> int:
        db = self._db()
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        free = db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * self._page_size)

    # --- the one write path -------------------------------------------------------------------

    def commit(
        self,
        new: Sequence[PendingRecord],
        acked: Collection[int] = (),
        *,
        now: float | None = None,
        force_seal: bool = False,
        horizon: float = 0.0,
        seal_all: bool = False,
    ) -> CommitResult:
        """Make `new` durable, forget acknowledged batches, seal what is due — one transaction.

        `horizon` is the time to the next commit: a batch whose oldest reading would pass
        `batch_max_age` before then is sealed now, so no reading waits longer than that and,
        at a slow rate, readings go straight into a batch instead of being written twice."""
        now = time.time() if now is None else now
        db = self._db()
        result = CommitResult(durable=len(new))
        db.execute("BEGIN IMMEDIATE")
        try:
            if acked:
                n = db.executemany("DELETE FROM batches WHERE seq = ?", [(s,) for s in acked])
                self._sealed -= n.rowcount
            rest = self._seal_due(db, new, now, horizon, force_seal or seal_all, result, seal_all)
            if rest:
                db.executemany(
                    "INSERT INTO readings(t, synced, source, record) VALUES (?, ?, ?, ?)",
                    [(r.t, int(r.synced), r.source, r.record) for r in rest],
                )
                if self._pending == 0:
                    self._oldest_pending = rest[0].t
                self._pending += len(rest)
            if self._used_bytes() > self.max_size:
                result.dropped = self._drop_oldest(db)
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            # Caches may have moved inside the failed transaction; re-read them.
            self._resync(db)
            raise
        return result

    def _resync(self, db: sqlite3.Connection) -> None:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        self._next_seq = int(meta["next_seq"])
        self._prev = bytes.fromhex(meta["prev"])
        self._pending, self._oldest_pending = db.execute(
            "SELECT count(*), min(t) FROM readings"
        ).fetchone()
        self._sealed = db.execute("SELECT count(*) FROM batches").fetchone()[0]

    def _seal_due(
        self,
        db: sqlite3.Connection,
        new: Sequence[PendingRecord],
        now: float,
        horizon: float,
        force: bool,
        result: CommitResult,
        seal_all: bool = False,
    ) -> Sequence[PendingRecord]:
        """Seal every batch that is due; return the new records left to store as pending."""
        bmr = self.batch_max_readings
        total = self._pending + len(new)
        if total == 0:
            return new
        oldest = self._oldest_pending
        if oldest is None or not self._pending:
            oldest = new[0].t
        deadline = now + horizon  # ages are judged as they will be at the next commit
        if not (force or total >= bmr or deadline - oldest >= self.batch_max_age):
            return new
        # Even a forced seal (at shutdown) respects the room: with the broker away, sealing a
        # large backlog would only delay the exit; pending rows keep just as well.
        room = self.seal_ahead - self._sealed
        if seal_all:
            # A change of modules: every reading judged so far is sealed now, under the module
            # list that judged it (the caller checked that this is not a large backlog).
            room = max(room, -(-total // bmr))
        if room <= 0:
            return new
        limit = room * bmr
        rows = db.execute(
            "SELECT id, t, synced, source, record FROM readings ORDER BY id LIMIT ?", (limit,)
        ).fetchall()
        queue: list[PendingRecord] = [
            PendingRecord(t, bool(s), src, rec) for _, t, s, src, rec in rows
        ]
        from_db = len(queue)
        queue.extend(new[: max(0, limit - from_db)])
        chunks = _chunks(queue, bmr)
        # The last chunk may still be filling: seal it only when full, old enough, forced,
        # or cut short by a clock change (then it is not last).
        last = chunks[-1]
        if not (force or len(last) >= bmr or deadline - queue[last[0]].t >= self.batch_max_age):
            chunks.pop()
        chunks = chunks[:room]
        if not chunks:
            return new
        consumed = chunks[-1][-1] + 1
        drops = db.execute("SELECT id, n, t_from, t_to, why FROM drops ORDER BY id").fetchall()
        for i, idx in enumerate(chunks):
            recs = [queue[j] for j in idx]
            receipts = (
                [payloads.DropReceipt(n, a, b, why) for _, n, a, b, why in drops] if i == 0 else []
            )
            result.sealed.append(self._seal(db, recs, receipts, now))
        if drops:
            db.execute("DELETE FROM drops")
        used_db = min(consumed, from_db)
        if used_db:
            db.execute("DELETE FROM readings WHERE id <= ?", (rows[used_db - 1][0],))
            self._pending -= used_db
            self._oldest_pending = (
                rows[used_db][1]
                if used_db < len(rows)
                else (db.execute("SELECT min(t) FROM readings").fetchone()[0])
            )
        return new[max(0, consumed - from_db) :]

    def _seal(
        self,
        db: sqlite3.Connection,
        recs: Sequence[PendingRecord],
        receipts: Sequence[payloads.DropReceipt],
        now: float,
    ) -> tuple[int, bytes, int]:
        seq = self._next_seq
        payload, _root = payloads.encode_batch(
            did=self.identity.did,
            seq=seq,
            prev=self._prev,
            sealed=round(now, 3),
            records=[r.record for r in recs],
            clock_synced=recs[0].synced,
            clock_source=recs[0].source,
            modules=self.modules(),
            dropped=receipts,
            boot=self.boot,
        )
        message = cose.sign1(self.identity, cose.TYP_BATCH, payload)
        batch_id = hashlib.sha256(payload).digest()
        db.execute(
            "INSERT INTO batches(seq, batch_id, sealed, n, first_t, message) VALUES (?,?,?,?,?,?)",
            (seq, batch_id, now, len(recs), recs[0].t, message),
        )
        db.executemany(
            "UPDATE meta SET value = ? WHERE key = ?",
            [(str(seq + 1), "next_seq"), (batch_id.hex(), "prev")],
        )
        self._next_seq = seq + 1
        self._prev = batch_id
        self._sealed += 1
        return seq, message, len(recs)

    def _drop_oldest(self, db: sqlite3.Connection) -> int:
        """Past the cap: drop the oldest pending readings down to 90 % of it, with a receipt."""
        if not self._pending:
            return 0
        excess = self._used_bytes() - int(self.max_size * 0.9)
        avg = (
            db.execute(
                "SELECT avg(length(record)) FROM (SELECT record FROM readings ORDER BY id LIMIT 64)"
            ).fetchone()[0]
            or 64.0
        )
        # A row costs its record plus rowid, time, flags and b-tree overhead (~24 bytes).
        n = min(self._pending, max(1, math.ceil(excess / (avg + 24))))
        last_id, n_real, t_from, t_to = db.execute(
            "SELECT max(id), count(*), min(t), max(t) FROM "
            "(SELECT id, t FROM readings ORDER BY id LIMIT ?)",
            (n,),
        ).fetchone()
        db.execute("DELETE FROM readings WHERE id <= ?", (last_id,))
        db.execute(
            "INSERT INTO drops(n, t_from, t_to, why) VALUES (?, ?, ?, ?)",
            (n_real, t_from, t_to, DROP_WHY_FULL),
        )
        self._pending -= n_real
        self._oldest_pending = db.execute("SELECT min(t) FROM readings").fetchone()[0]
        return int(n_real)


def _chunks(queue: Sequence[PendingRecord], size: int) -> list[list[int]]:
    """Indexes of `queue` cut into batches of at most `size`, never mixing clock states."""
    chunks: list[list[int]] = []
    cur: list[int] = []
    synced = queue[0].synced if queue else False
    for i, r in enumerate(queue):
        if cur and (len(cur) >= size or r.synced != synced):
            chunks.append(cur)
            cur = []
        synced = r.synced
        cur.append(i)
    if cur:
        chunks.append(cur)
    return chunks
