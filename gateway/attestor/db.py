"""One small SQL layer over SQLite (one attestor) and PostgreSQL (several workers).

The statements are written once, in the dialect both share (`?` placeholders are turned into
psycopg's `%s`); what differs is how a transaction takes its lock. SQLite's `BEGIN IMMEDIATE`
takes the one write lock of the file; PostgreSQL locks only the device's row (`FOR UPDATE`), so
workers handling different devices never wait on each other, and two batches of one device are
ordered by the database, whichever worker got them.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from gateway.errors import ConfigError

SCHEMA = """
CREATE TABLE IF NOT EXISTS devices (
    did TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    registered DOUBLE PRECISION NOT NULL,
    last_seq BIGINT
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
    PRIMARY KEY (did, boot)
);
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
    PRIMARY KEY (did, epoch_start)
);
"""


class Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ...) -> Any: ...
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
                raise ConfigError([f"store {url!r}: PostgreSQL needs psycopg: {need}"]) from None
            self._pg = psycopg.connect(url, autocommit=True)
            self._lite: sqlite3.Connection | None = None
        elif u.scheme in ("", "sqlite"):
            self.dialect = "sqlite"
            path = Path(u.path if u.scheme else url)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._lite = sqlite3.connect(path, isolation_level=None, timeout=60)
            self._lite.execute("PRAGMA journal_mode=WAL")
            self._lite.execute("PRAGMA synchronous=NORMAL")
        else:
            raise ConfigError([f"store {url!r}: use a file path, sqlite:///PATH or postgresql://…"])
        self.create()

    def _sql(self, sql: str) -> str:
        if self.dialect == "sqlite":
            return sql.replace("BYTEA", "BLOB").replace(" FOR UPDATE", "")
        return sql.replace("?", "%s")

    def create(self) -> None:
        for stmt in SCHEMA.split(";"):
            if stmt.strip():
                self.execute(stmt)

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Outside a transaction: one statement, committed."""
        if self._lite is not None:
            return self._lite.execute(self._sql(sql), params)
        return self._pg.execute(self._sql(sql), params)

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
            with self._pg.transaction(), self._pg.cursor() as cur:
                yield Tx(self, cur)

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
