"""One small SQL layer over SQLite (one attestor) and PostgreSQL (several workers).

The statements are written once, in the dialect both share (`?` placeholders are turned into
psycopg's `%s`); what differs is how a transaction takes its lock. SQLite's `BEGIN IMMEDIATE`
takes the one write lock of the file; PostgreSQL locks only the device's row (`FOR UPDATE`), so
workers handling different devices never wait on each other, and two batches of one device are
ordered by the database, whichever worker got them.

Cost per transaction (one per batch): PostgreSQL transactions run in pipeline mode, so
statements whose results are not needed yet travel together (`Tx.query` issues one without
waiting; fetching its rows, or the commit, sends what is queued): a batch takes two round trips
instead of seven. Statements are prepared once per connection (SQLite's statement cache;
psycopg prepares a statement it has run five times).
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from gateway.attestor.redact import redact, safe_url
from gateway.core.errors import ConfigError

if TYPE_CHECKING:
    import psycopg

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    did TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    registered DOUBLE PRECISION NOT NULL,
    last_seq BIGINT,
    first_sealed DOUBLE PRECISION
);
CREATE TABLE IF NOT EXISTS batches (
    did TEXT NOT NULL,
    seq BIGINT NOT NULL,
    batch_id BYTEA NOT NULL,
    prev BYTEA NOT NULL,
    sealed DOUBLE PRECISION NOT NULL,
    kind TEXT NOT NULL,
    readings INTEGER NOT NULL,
    synced INTEGER NOT NULL,
    flagged INTEGER NOT NULL,
    received DOUBLE PRECISION NOT NULL,
    message BYTEA NOT NULL,
    PRIMARY KEY (did, seq)
);
CREATE INDEX IF NOT EXISTS batches_sealed ON batches (did, sealed);
CREATE TABLE IF NOT EXISTS evidence (
    did TEXT NOT NULL,
    seq BIGINT NOT NULL,
    kind TEXT NOT NULL,
    batch_id BYTEA NOT NULL,
    sealed DOUBLE PRECISION NOT NULL,
    detail TEXT NOT NULL,
    received DOUBLE PRECISION NOT NULL,
    message BYTEA NOT NULL,
    PRIMARY KEY (did, seq, batch_id)
);
CREATE TABLE IF NOT EXISTS gaps (
    did TEXT NOT NULL,
    first_seq BIGINT NOT NULL,
    last_seq BIGINT NOT NULL,
    received DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (did, first_seq)
);
CREATE TABLE IF NOT EXISTS counts (
    did TEXT NOT NULL,
    kind TEXT NOT NULL,
    n BIGINT NOT NULL,
    PRIMARY KEY (did, kind)
);
CREATE TABLE IF NOT EXISTS births (
    did TEXT NOT NULL,
    boot BYTEA NOT NULL,
    started DOUBLE PRECISION NOT NULL,
    sensors TEXT NOT NULL,
    received DOUBLE PRECISION NOT NULL,
    message BYTEA NOT NULL,
    summary TEXT,
    PRIMARY KEY (did, boot)
);
CREATE INDEX IF NOT EXISTS births_received ON births (did, received);
CREATE TABLE IF NOT EXISTS attestations (
    did TEXT NOT NULL,
    epoch_start BIGINT NOT NULL,
    epoch_end BIGINT NOT NULL,
    expected BIGINT NOT NULL,
    verified BIGINT NOT NULL,
    flagged BIGINT NOT NULL,
    status TEXT NOT NULL,
    score DOUBLE PRECISION NOT NULL,
    root BYTEA NOT NULL,
    message BYTEA NOT NULL,
    published INTEGER NOT NULL,
    revision BIGINT NOT NULL DEFAULT 0,
    stale INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (did, epoch_start)
);
CREATE TABLE IF NOT EXISTS superseded (
    did TEXT NOT NULL,
    epoch_start BIGINT NOT NULL,
    revision BIGINT NOT NULL,
    message BYTEA NOT NULL,
    PRIMARY KEY (did, epoch_start, revision)
);
"""

#: Columns added after the first release: (table, column, type), added to an older store.
ADDED = (
    ("devices", "first_sealed", "DOUBLE PRECISION"),
    ("attestations", "revision", "BIGINT NOT NULL DEFAULT 0"),
    ("attestations", "stale", "INTEGER NOT NULL DEFAULT 0"),
    ("births", "summary", "TEXT"),
)


def is_outage(e: BaseException) -> bool:
    """Whether `e` says the store is away (unreachable, locked, full, its disk failing): what
    may be tried again. Anything else raised while a message is handled is about the message."""
    if isinstance(e, sqlite3.OperationalError | sqlite3.InterfaceError):
        return True
    try:
        import psycopg
    except ImportError:
        return False
    return isinstance(e, psycopg.OperationalError | psycopg.InterfaceError)


class Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...
    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Rows(Protocol):
    """The results of one statement (`Tx.query`)."""

    def fetchone(self) -> Any: ...
    def fetchall(self) -> list[Any]: ...


class Database:
    """A connection and the dialect's few differences. Not shared between threads."""

    dialect: str

    def __init__(self, url: str) -> None:
        self.url = url
        u = urlsplit(url)
        if u.scheme in ("postgresql", "postgres"):
            self.dialect = "postgresql"
            try:
                import psycopg
            except ImportError:
                need = "pip install 'depin-gateway[postgres]'"
                where = safe_url(url)
                raise ConfigError([f"store {where!r}: PostgreSQL needs psycopg: {need}"]) from None
            self._psycopg = psycopg
            self._lite: sqlite3.Connection | None = None
            self._pg = self._connect_pg()
        elif u.scheme in ("", "sqlite"):
            self.dialect = "sqlite"
            path = Path(u.path if u.scheme else url)
            path.parent.mkdir(parents=True, exist_ok=True)
            # A worker may open its store in one thread and use it in another (never two at
            # once: the Database is not shared).
            self._lite = sqlite3.connect(
                path, isolation_level=None, timeout=60, check_same_thread=False
            )
            self._lite.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before it returns. The worker acknowledges a batch to
            # the broker after its transaction committed, and the broker then forgets it, so a
            # commit lost to a power cut (what NORMAL allows in WAL mode) would be a batch lost
            # for good, counted against the device as a gap. PostgreSQL's default
            # (synchronous_commit = on) gives the same guarantee; the cost is one fsync of the
            # WAL per batch (well under a millisecond on this machine's disk).
            self._lite.execute("PRAGMA synchronous=FULL")
        else:
            where = safe_url(url)
            raise ConfigError(
                [f"store {where!r}: use a file path, sqlite:///PATH or postgresql://…"]
            )
        self.create()

    def _connect_pg(self) -> psycopg.Connection[Any]:
        pg = self._psycopg
        try:
            conn: psycopg.Connection[Any] = pg.connect(
                self.url, autocommit=True, connect_timeout=10
            )
        except pg.OperationalError as e:  # unreachable: the caller tries again
            raise pg.OperationalError(redact(str(e), self.url)) from None
        except pg.Error as e:  # a url psycopg cannot use: it may echo the url
            why = redact(str(e), self.url)
            raise ConfigError([f"store {safe_url(self.url)!r}: {why}"]) from None
        # Batches are stored whole (evidence), 5-100 kB each: pglz, the default, spent more
        # server CPU compressing them than the rest of the transaction; lz4 is several times
        # faster and still compresses. A session setting, so existing tables need no ALTER; a
        # server built without lz4 keeps pglz.
        with contextlib.suppress(pg.Error):
            conn.execute("SET default_toast_compression = 'lz4'")
        return conn

    def _live(self) -> psycopg.Connection[Any]:
        """The PostgreSQL connection, opened again when the server dropped the last one (a
        restart, a failover, an administrator): psycopg never reconnects by itself. Raises
        (psycopg.OperationalError) while the server is unreachable; the caller retries."""
        pg = self._pg
        if pg.closed or pg.broken:
            with contextlib.suppress(Exception):
                pg.close()
            pg = self._pg = self._connect_pg()
        return pg

    def _sql(self, sql: str) -> str:
        return _dialect_sql(self.dialect, sql)

    def create(self) -> None:
        for stmt in SCHEMA.split(";"):
            if stmt.strip():
                self.execute(stmt)
        self._upgrade()

    def _columns(self, table: str) -> set[str]:
        if self._lite is not None:
            return {str(r[1]) for r in self._lite.execute(f"PRAGMA table_info({table})")}
        rows = self.execute(
            "SELECT column_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = ?",
            (table,),
        ).fetchall()
        return {str(r[0]) for r in rows}

    def _upgrade(self) -> None:
        """Columns added after the first release (ADDED), added to a store made before them:
        `devices.first_sealed`, the sealed time of the device's first accepted batch;
        `attestations.revision` and `stale`, an epoch's attestation signed again for batches
        that arrived after it (0 and not stale: what every attestation of an older store is);
        `births.summary`, what a birth's sensor list makes expected (NULL in an older store,
        whose births all hold their sensor list, which scoring reads in its place)."""
        for table, column, kind in ADDED:
            if column in self._columns(table):
                continue
            # IF NOT EXISTS (PostgreSQL): several workers may start at once.
            exists = " IF NOT EXISTS" if self.dialect == "postgresql" else ""
            try:
                self.execute(f"ALTER TABLE {table} ADD COLUMN{exists} {column} {kind}")
            except sqlite3.OperationalError:  # another SQLite process added it meanwhile
                if column not in self._columns(table):
                    raise
        # Devices whose batches were stored before the column was there (cheap: it is NULL
        # only for devices without batches once this has run).
        self.execute(
            "UPDATE devices SET first_sealed = "
            "(SELECT min(b.sealed) FROM batches b WHERE b.did = devices.did) "
            "WHERE first_sealed IS NULL"
        )

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Outside a transaction: one statement, committed. Every such statement is a read or
        idempotent, so one that failed because the server dropped the connection is sent once
        more on a new connection."""
        if self._lite is not None:
            return self._lite.execute(self._sql(sql), params)
        try:
            return self._live().execute(self._sql(sql), params)
        except self._psycopg.OperationalError:
            if not (self._pg.closed or self._pg.broken):
                raise
        return self._live().execute(self._sql(sql), params)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[Tx]:
        if self._lite is not None:
            self._lite.execute("BEGIN IMMEDIATE")
            try:
                yield Tx(self, self._lite.cursor())
            except BaseException:
                self._lite.execute("ROLLBACK")
                raise
            self._lite.execute("COMMIT")
        else:
            # BEGIN and COMMIT are plain statements in the pipeline, so they travel with the
            # statements next to them (psycopg's own transaction() syncs around each).
            # A transaction that failed with the connection is not retried here: the caller
            # runs it again as a whole (the worker retries the message).
            pg = self._live()
            try:
                with pg.pipeline(), pg.cursor() as cur:
                    cur.execute("BEGIN")
                    yield Tx(self, cur)
                    cur.execute("COMMIT")
            except BaseException:
                # A failed statement leaves the transaction aborted (or, when the block
                # raised, open): end it, so the connection stays usable.
                with contextlib.suppress(Exception):
                    pg.execute("ROLLBACK")
                raise

    def close(self) -> None:
        if self._lite is not None:
            self._lite.close()
        else:
            self._pg.close()


class Tx:
    def __init__(self, db: Database, cur: Any) -> None:
        self.db = db
        self.cur = cur

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.cur.execute(self.db._sql(sql), params)

    def one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.execute(sql, params).fetchone()

    def all(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        return list(self.execute(sql, params).fetchall())

    def query(self, sql: str, params: Sequence[Any] = ()) -> Rows:
        """Issue a statement on a cursor of its own and return that cursor, to fetch from
        later: in PostgreSQL's pipeline the statement is sent with whatever follows, up to
        the first fetch. SQLite runs it at once."""
        db = self.db
        if db._lite is not None:
            return db._lite.execute(db._sql(sql), params)
        cur = db._pg.cursor()  # the connection `transaction` checked
        cur.execute(db._sql(sql), params)
        return cur


@functools.lru_cache(maxsize=256)
def _dialect_sql(dialect: str, sql: str) -> str:
    """A statement in the store's dialect; cached, as the statements are a fixed few."""
    if dialect == "sqlite":
        return sql.replace("BYTEA", "BLOB").replace(" FOR UPDATE", "")
    return sql.replace("?", "%s")
