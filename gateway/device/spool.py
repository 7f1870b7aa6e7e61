"""The durable spool: pending readings and sealed, unacknowledged batches in one SQLite file.

Decisions (docs/spool.md has the full story):
- A reading counts as read only once a commit holding it has returned: either as a pending row
  or already sealed inside a batch. At full speed most readings are sealed in the same commit
  that makes them durable, so they are written once, as part of a batch.
- A batch is sealed (seq, prev, root, signature: `seal.py` builds and signs it) and stored in the
  same transaction that moves `next_seq` and `prev` forward, so seq never repeats or skips,
  whatever moment power fails.
- Sealed batches are published byte for byte as stored, and deleted only after the broker's
  PUBACK (lazily, in a later commit: a crash in between re-publishes a duplicate, which
  verifiers accept idempotently).
- Only a few batches are sealed ahead of the uplink (`seal_ahead`); while the broker is away,
  readings wait as pending rows, so the size cap can drop the oldest readings individually and
  the chain itself never has a hole. Drops are recorded and signed into the next batch.
- One process per spool and per key (`lockfile`), and a seq is never signed twice even when
  the spool goes back in time or is replaced: the chain's position is also kept outside the
  spool (`highwater`), written after each commit that sealed a batch and before the uplink
  gets any of its batches; a spool found behind it takes the chain up after it.
- A full disk is not an error of the spool: a write refused for want of space raises `DiskFull`
  with nothing of it stored (what was durable stays so), and the same write can be tried again.
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import sqlite3
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from gateway.core.errors import KeyInUse, SpoolError
from gateway.device import highwater, lockfile
from gateway.device.disk_full import DiskFull, abandon, disk_full
from gateway.device.head import Head
from gateway.device.highwater import Entry, HighWater, Record, Stated
from gateway.device.seal import ModuleEntry, Seal, SealedBatch
from gateway.wire import payloads
from gateway.wire.identity import Identity

log = logging.getLogger("gateway.spool")

FORMAT = 1
DROP_WHY_FULL = "spool-full"
#: The tables. Plain SQL rather than sqlite-utils' table builder: importing sqlite-utils brings
#: numpy (and pandas) wherever they are installed, 130-220 ms of every start and ~17 MB
#: (bench/startup.py). The `sqlite-utils` command still reads the file, as the README shows.
SCHEMA = (
    'CREATE TABLE "meta" ("key" TEXT PRIMARY KEY, "value" TEXT)',
    'CREATE TABLE "readings" ("id" INTEGER PRIMARY KEY, "t" REAL, "synced" INTEGER, '
    '"source" TEXT, "record" BLOB)',
    'CREATE TABLE "batches" ("seq" INTEGER PRIMARY KEY, "batch_id" BLOB, "sealed" REAL, '
    '"n" INTEGER, "first_t" REAL, "message" BLOB)',
    'CREATE TABLE "drops" ("id" INTEGER PRIMARY KEY, "n" INTEGER, "t_from" REAL, "t_to" REAL, '
    '"why" TEXT)',
)


@dataclass(frozen=True, slots=True)
class PendingRecord:
    t: float
    synced: bool
    source: str
    record: bytes  # the SenML record exactly as it will appear in the batch


@dataclass
class CommitResult:
    durable: int = 0
    sealed: list[SealedBatch] = field(default_factory=list)
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
        modules: Callable[[], Sequence[ModuleEntry]],
        key_file: Path | None = None,
    ) -> None:
        self.path = path
        self.key_file = key_file  # locked too: one key, one running gateway
        # From the spool's real path: a gateway reaching the same spool through a symlink (to the
        # file or to its folder) must meet the same lock and the same chain record.
        real = Path(os.path.realpath(path))
        self.lock_path = highwater.beside(real, ".lock")
        self.chain = HighWater(highwater.beside(real, ".chain"))
        self.identity = identity
        # Batches are sealed by the device key, for this process (`boot`), naming the modules
        # `modules()` returns as each is sealed.
        self.seal = Seal(identity, boot=boot, modules=modules)
        self.max_size = max_size
        self.batch_max_readings = batch_max_readings
        self.batch_max_age = batch_max_age
        self.seal_ahead = seal_ahead
        self.conn: sqlite3.Connection | None = None
        # Caches of what the file holds, kept exact by this object (the only writer).
        self._pending = 0
        self._oldest_pending: float | None = None
        self._sealed = 0
        self._next_seq = 0
        self._prev = payloads.ZERO_PREV
        self._page_size = 4096
        self._spool_id = ""
        self._taken = 0  # readings that left the queue (sealed or dropped), chain-wide
        self._stated: list[Stated] = []  # loss receipts not yet known to be delivered
        self._covered = -1  # the highest seq the chain record holds: batches up to it may go
        self._carrier: int | None = None  # the batch that took the drops table in this commit
        self._locks: list[lockfile.Held] = []
        # Until `anchor`: nothing is sealed (readings wait as pending rows). The daemon holds
        # the spool until it has read the chain head the broker keeps.
        self.held = False
        # (seq, batch id, taken) of the last sealed batch as committed: read by the event loop
        # for the head it publishes, so replaced whole, never changed in place.
        self.position: tuple[int, bytes, int] | None = None
        # Pending rows the spool held when it opened: only those can have gone into batches
        # signed elsewhere (a head ahead of the spool), never the readings of this run.
        self._pending_at_open = 0
        # The last write of the chain record, when it was refused for want of space (the
        # commit itself went through; the batches it sealed wait for the record), else None.
        self.refused: DiskFull | None = None

    # --- opening ------------------------------------------------------------------------------

    def open(self) -> None:
        """Lock, check and open the spool, and take the chain up where it really stands.
        Raises SpoolError, before anything is written, when another process has the spool or
        the key, or the spool or its chain record is unusable; DiskFull (having stored nothing)
        when its file system has no room for what opening writes: try again later."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            if disk_full(e):
                raise DiskFull(self.path.parent, e) from e
            raise SpoolError(f"spool {self.path} cannot be opened: {e}") from None
        try:
            self._locks = [lockfile.lock(self.path, what="spool", lock_file=self.lock_path)]
            if self.key_file is not None:
                self._locks.append(lockfile.lock(self.key_file, what="device key"))
            self._open()
        except BaseException as e:
            self.close()
            if not isinstance(e, DiskFull) and disk_full(e, self.path):
                raise DiskFull(self.path, e) from e
            raise

    @property
    def spool_id(self) -> str:
        return self._spool_id

    @property
    def next_seq(self) -> int:
        return self._next_seq

    def _open(self) -> None:
        existed = self.path.exists() and self.path.stat().st_size > 0
        wal = Path(f"{self.path}-wal")
        if not existed and wal.exists() and wal.stat().st_size > 0:
            # SQLite would delete it, and with it the last commits of the spool it belongs to.
            raise SpoolError(
                f"{wal} is there without its spool {self.path}: it holds the last commits of a "
                f"spool moved away. Move it (and {self.path.name}-shm) to where that spool is, "
                f"or aside; the gateway then starts a new spool."
            )
        record = self.chain.read(self.identity.did)  # before SQLite: a bad record stops us here
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (sqlite3.Error, OSError) as e:
            if disk_full(e, self.path):
                raise DiskFull(self.path, e) from e
            raise SpoolError(f"spool {self.path} cannot be opened: {e}") from None
        try:
            self._prepare(conn, existed)
            self._take_up(conn, record)
        except sqlite3.DatabaseError as e:
            conn.close()
            if disk_full(e, self.path):
                # Not a damaged spool: on a full disk SQLite cannot even set up its -shm.
                raise DiskFull(self.path, e) from e
            raise SpoolError(
                f"spool {self.path} is corrupt or not an SQLite database ({e}); it was left "
                f"untouched: {self._aside()}, or "
                f"inspect it with `sqlite3 {self.path} .recover`"
            ) from None
        except BaseException:
            conn.close()
            raise
        self.conn = conn

    def _aside(self) -> str:
        """What to do with a spool that cannot be used. Safe: the chain record keeps the chain
        going after the last seq signed, and states what never reached the broker."""
        files = [
            f for f in (f"{self.path}", f"{self.path}-wal", f"{self.path}-shm") if Path(f).exists()
        ]
        return (
            f"move it aside with its -wal and -shm files (`mv {' '.join(files)} <somewhere>`; "
            f"keep {self.chain.path}) to start a new spool, which takes the chain up after the "
            f"last batch signed"
        )

    def _prepare(self, conn: sqlite3.Connection, existed: bool) -> None:
        if existed:
            row = conn.execute("PRAGMA quick_check").fetchone()
            if row is None or row[0] != "ok":
                raise SpoolError(
                    f"spool {self.path} failed SQLite's integrity check ({row and row[0]}); it "
                    f"was left untouched: {self._aside()}"
                )
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: in WAL mode this fsyncs the log at every commit, which is what makes a commit
        # survive a power cut (NORMAL only survives a process crash).
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA journal_size_limit=4194304")
        self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        tables = {
            name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if existed and tables and "meta" not in tables:
            raise SpoolError(f"spool {self.path} is an SQLite file but not a depin-gateway spool")
        if "meta" not in tables:
            conn.execute("BEGIN IMMEDIATE")
            try:
                for ddl in SCHEMA:
                    conn.execute(ddl)
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
            except BaseException:
                abandon(conn)
                raise
        meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
        if meta.get("format") != str(FORMAT):
            raise SpoolError(f"spool {self.path} has format {meta.get('format')}, not {FORMAT}")
        if meta.get("did") != self.identity.did:
            raise SpoolError(
                f"spool {self.path} belongs to {meta.get('did')}, not to this device's key "
                f"{self.identity.did}; a spool never changes hands (its chain is signed)"
            )
        if "spool_id" not in meta:  # a new spool, or one made before spools had an id
            meta |= {"spool_id": secrets.token_hex(8), "taken": "0"}
            conn.executemany(
                "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                [("spool_id", meta["spool_id"]), ("taken", meta["taken"])],
            )
            # Into the file itself: a spool whose -wal is deleted keeps its identity, and
            # counts as rolled back, not replaced.
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._spool_id = meta["spool_id"]
        self._resync(conn)
        self._pending_at_open = self._pending

    def _take_up(self, conn: sqlite3.Connection, record: Record | None) -> None:
        """Continue the chain after the chain record when the spool is behind it, then bring
        the record up to the spool (a crash between a commit and its record leaves the spool
        ahead; those batches were never handed to the uplink)."""
        if record is not None and self._next_seq <= record.seq:
            self._recover(conn, record)
        elif record is not None:
            if self._next_seq == record.seq + 1 and self._prev != record.batch:
                log.error(
                    "spool %s and chain record %s disagree on batch %d: the spool's chain "
                    "goes on (was an old gateway version run on a restored spool?)",
                    self.path,
                    self.chain.path,
                    record.seq,
                )
            self._stated = list(record.stated)
        self._covered = -1 if record is None else min(record.seq, self._next_seq - 1)
        if self._next_seq > 0:
            self._cover(conn)

    def anchor(self, head: Head | None) -> bool:
        """Release the hold, after taking the chain up after `head` (the chain head the broker
        keeps) when it is ahead of this spool: the spool and its record were lost, replaced or
        restored together. True when the chain moved. Raises KeyInUse, still holding, when the
        head names another batch at the spool's last seq: the chain has forked."""
        db = self._db()
        if head is not None and head.seq == self._next_seq - 1 and head.batch != self._prev:
            raise KeyInUse(
                f"the broker's chain head for this device names another batch at seq "
                f"{head.seq} than spool {self.path}: the chain has forked (a copy of this "
                f"device's key signed it, or this spool was restored and went on under an "
                f"older version). Stop the other gateway if there is one; then move this spool "
                f"aside with its -wal, -shm and .chain files: the gateway goes on after the "
                f"broker's head"
            )
        if head is None or head.seq < self._next_seq:
            self.held = False
            return False
        record = Record(
            did=self.identity.did,
            spool=head.spool,
            seq=head.seq,
            batch=head.batch,
            sealed=None,
            taken=head.taken,
            stated=tuple(self._stated),
        )
        self._recover(
            db,
            record,
            behind="the chain head the broker keeps",
            pending=min(self._pending, self._pending_at_open),
        )
        self._cover(db)
        self.held = False
        return True

    def _recover(
        self,
        conn: sqlite3.Connection,
        record: Record,
        *,
        behind: str = "",
        pending: int | None = None,
    ) -> None:
        p = highwater.plan(
            record,
            spool_id=self._spool_id,
            next_seq=self._next_seq,
            taken=self._taken,
            pending=self._pending if pending is None else pending,
        )
        was = self._next_seq
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(
                "UPDATE meta SET value = ? WHERE key = ?",
                [(str(p.next_seq), "next_seq"), (p.prev.hex(), "prev"), (str(p.taken), "taken")],
            )
            conn.execute("DELETE FROM batches WHERE seq < ?", (p.forget_below,))
            if p.drop_pending:
                conn.execute(
                    "DELETE FROM readings WHERE id IN "
                    "(SELECT id FROM readings ORDER BY id LIMIT ?)",
                    (p.drop_pending,),
                )
            there = {
                payloads.DropReceipt(n, a, b, why)
                for n, a, b, why in conn.execute("SELECT n, t_from, t_to, why FROM drops")
            }
            conn.executemany(
                "INSERT INTO drops(n, t_from, t_to, why) VALUES (?, ?, ?, ?)",
                [(r.n, r.t_from, r.t_to, r.why) for r in p.receipts if r not in there],
            )
            conn.execute("COMMIT")
        except BaseException:
            abandon(conn)
            raise
        # Into the file itself, so that losing the -wal again cannot undo the statement.
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        self._resync(conn)
        # Statements whose batch the spool still holds stay as they are; the others go again.
        kept = [s for s in record.stated if s.carrier is not None and s.carrier < was]
        self._stated = kept + [Stated(r, None) for r in p.receipts]
        lost = ", ".join(f"{a}-{b}" if a != b else f"{a}" for a, b in p.lost) or "none"
        log.warning(
            "spool %s is behind %s (spool at seq %d, record at seq %d): %s. "
            "The chain goes on at seq %d after batch %s; sealed seqs lost and maybe never "
            "delivered: %s%s%s",
            self.path,
            behind or f"its chain record {self.chain.path}",
            was,
            record.seq,
            p.reason,
            p.next_seq,
            p.prev.hex()[:16],
            lost,
            "; stated in the next batch" if p.receipts else "",
            f"; {p.drop_pending} pending readings were already in lost batches and are not "
            "signed again"
            if p.drop_pending
            else "",
        )

    def _cover(self, db: sqlite3.Connection) -> bool:
        """Write the chain record for the spool as it is now; True when it then holds every
        sealed batch. A failure is logged, and the batches it does not hold are kept from the
        uplink until a later write succeeds."""
        rows = db.execute("SELECT seq, n, first_t, sealed FROM batches ORDER BY seq").fetchall()
        first_unacked = rows[0][0] if rows else self._next_seq
        self._stated = [s for s in self._stated if s.carrier is None or s.carrier >= first_unacked]
        record = Record(
            did=self.identity.did,
            spool=self._spool_id,
            seq=self._next_seq - 1,
            batch=self._prev,
            sealed=rows[-1][3] if rows and rows[-1][0] == self._next_seq - 1 else None,
            taken=self._taken,
            unacked=tuple(Entry(*r) for r in rows),
            stated=tuple(self._stated),
        )
        try:
            self.chain.write(record)
        except OSError as e:
            if disk_full(e):
                was, self.refused = self.refused, DiskFull(self.chain.path, e)
                if was is not None:  # said already, and counted by the commit buffer
                    return False
            if self._covered < self._next_seq - 1:
                log.error(
                    "chain record %s cannot be written (%s): batches from seq %d on are held "
                    "back from the broker until it can",
                    self.chain.path,
                    e,
                    self._covered + 1,
                )
            else:
                log.warning("chain record %s cannot be written: %s", self.chain.path, e)
            return False
        self.refused = None
        self._covered = self._next_seq - 1
        return True

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
        self.chain.close()
        for held in reversed(self._locks):
            held.release()
        self._locks = []

    def _db(self) -> sqlite3.Connection:
        if self.conn is None:
            raise SpoolError("spool is not open")
        return self.conn

    # --- reading ------------------------------------------------------------------------------

    def unacked(self) -> list[SealedBatch]:
        """Sealed batches not yet acknowledged, oldest first, exactly as stored (those the
        chain record holds: normally all)."""
        rows = self._db().execute(
            "SELECT seq, message, n FROM batches WHERE seq <= ? ORDER BY seq", (self._covered,)
        )
        return [SealedBatch(*r) for r in rows]

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
            not self.held
            and self._pending > 0
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
        dropped: Sequence[payloads.DropReceipt] = (),
    ) -> CommitResult:
        """Make `new` durable, forget acknowledged batches, seal what is due — one transaction.

        `horizon` is the time to the next commit: a batch whose oldest reading would pass
        `batch_max_age` before then is sealed now, so no reading waits longer than that and,
        at a slow rate, readings go straight into a batch instead of being written twice.
        `dropped`: receipts for readings given up before they reached the spool, signed into
        the next batch like the spool's own. Raises DiskFull, having changed nothing, when the
        file system refuses the write for want of space."""
        now = time.time() if now is None else now
        args = (new, acked, now, force_seal, horizon, seal_all, dropped)
        try:
            return self._commit(*args)
        except DiskFull:
            # The WAL may have taken the last of the space itself: it only starts over after a
            # checkpoint, which SQLite tries after a commit that went through. One now lets the
            # same commit reuse the WAL's own space, and a full disk shows only when it is one.
            if not self._checkpoint():
                raise
        return self._commit(*args)

    def _checkpoint(self) -> bool:
        """Copy the WAL into the spool file (which may take no new space: freed pages are
        reused) so that the next write starts the WAL over. True when it did all of it."""
        try:
            busy, frames, done = self._db().execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        except sqlite3.Error:
            return False
        return bool(busy == 0 and frames > 0 and done == frames)

    def _commit(
        self,
        new: Sequence[PendingRecord],
        acked: Collection[int],
        now: float,
        force_seal: bool,
        horizon: float,
        seal_all: bool,
        dropped: Sequence[payloads.DropReceipt],
    ) -> CommitResult:
        db = self._db()
        result = CommitResult(durable=len(new))
        try:
            db.execute("BEGIN IMMEDIATE")
            if dropped:
                db.executemany(
                    "INSERT INTO drops(n, t_from, t_to, why) VALUES (?, ?, ?, ?)",
                    [(r.n, r.t_from, r.t_to, r.why) for r in dropped],
                )
            forgot = 0
            if acked:
                n = db.executemany("DELETE FROM batches WHERE seq = ?", [(s,) for s in acked])
                forgot = n.rowcount
                self._sealed -= forgot
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
        except BaseException as e:
            abandon(db)
            # Caches may have moved inside the failed transaction; re-read them.
            self._resync(db)
            if disk_full(e, self.path):
                raise DiskFull(self.path, e) from e
            raise
        if result.sealed:
            self._note_position()
        if self._carrier is not None:  # the statements of earlier losses are in that batch
            self._stated = [
                Stated(s.receipt, self._carrier if s.carrier is None else s.carrier)
                for s in self._stated
            ]
            self._carrier = None
        if self._covered < self._next_seq - 1:
            result.sealed = self._record_and_release(db, result.sealed)
        elif forgot:
            # Not for safety: so that a loss states exactly the batches not acknowledged.
            self._cover(db)
        return result

    def _record_and_release(
        self, db: sqlite3.Connection, sealed: list[SealedBatch]
    ) -> list[SealedBatch]:
        """The batches the uplink may have now: the chain record first holds them all, so no
        later loss of the spool can make their seqs be signed again."""
        covered = self._covered
        if not self._cover(db):
            return []
        if sealed and sealed[0].seq == covered + 1:
            return sealed
        # An earlier record could not be written: hand over what it kept back as well.
        rows = db.execute(
            "SELECT seq, message, n FROM batches WHERE seq > ? ORDER BY seq", (covered,)
        )
        return [SealedBatch(*r) for r in rows]

    def _resync(self, db: sqlite3.Connection) -> None:
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        self._next_seq = int(meta["next_seq"])
        self._prev = bytes.fromhex(meta["prev"])
        self._taken = int(meta.get("taken", 0))
        self._carrier = None
        self._pending, self._oldest_pending = db.execute(
            "SELECT count(*), min(t) FROM readings"
        ).fetchone()
        self._sealed = db.execute("SELECT count(*) FROM batches").fetchone()[0]
        self._note_position()

    def _note_position(self) -> None:
        """The last sealed batch as committed, for the head (replaced whole: read elsewhere)."""
        self.position = (self._next_seq - 1, self._prev, self._taken) if self._next_seq else None

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
        if total == 0 or self.held:
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
            self._carrier = result.sealed[0].seq
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
    ) -> SealedBatch:
        """Seal `recs` as the next batch and store it where the chain moves forward."""
        seq = self._next_seq
        signed = self.seal(
            seq=seq,
            prev=self._prev,
            sealed=now,
            records=[r.record for r in recs],
            clock_synced=recs[0].synced,
            clock_source=recs[0].source,
            dropped=receipts,
        )
        db.execute(
            "INSERT INTO batches(seq, batch_id, sealed, n, first_t, message) VALUES (?,?,?,?,?,?)",
            (seq, signed.batch_id, now, len(recs), recs[0].t, signed.message),
        )
        self._taken += len(recs)
        db.executemany(
            "UPDATE meta SET value = ? WHERE key = ?",
            [
                (str(seq + 1), "next_seq"),
                (signed.batch_id.hex(), "prev"),
                (str(self._taken), "taken"),
            ],
        )
        self._next_seq = seq + 1
        self._prev = signed.batch_id
        self._sealed += 1
        return SealedBatch(seq, signed.message, len(recs))

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
        self._taken += n_real
        db.execute("UPDATE meta SET value = ? WHERE key = 'taken'", (str(self._taken),))
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
