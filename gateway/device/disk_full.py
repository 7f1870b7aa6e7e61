"""A full disk, told from the errors it causes: a write the file system refused for want of
space is not a broken spool. The spool raises `DiskFull` for such a write, with nothing of it
stored, and its callers hold what they meant to write and try again (docs/spool.md)."""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from pathlib import Path

from gateway.core.errors import SpoolError

#: free bytes below which an I/O error of SQLite's is a full disk: SQLite reports a `-shm` it
#: cannot grow (SQLITE_IOERR_SHMSIZE, at every open of a spool on a full disk) and some refused
#: writes as "disk I/O error", not as SQLITE_FULL
LOW_SPACE = 64 * 1024
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


class DiskFull(SpoolError):
    """A write the file system refused for want of space. Nothing of that write was stored,
    what was durable before still is, and the same write can be tried again once there is
    room. `cause` is the error the write met (not one raised while cleaning up after it)."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        self.path = path
        self.cause = cause
        super().__init__(f"disk full: {path} ({cause})")


def disk_full(e: BaseException, where: Path | None = None) -> bool:
    """Whether `e`, or an error it was raised from or while handling, is a refused write for
    want of space: ENOSPC or EDQUOT, SQLITE_FULL ("database or disk is full"), or an SQLite
    I/O error while the file system holding `where` has (nearly) no space left. The chain is
    followed because a failed COMMIT is often followed by a ROLLBACK that fails in turn
    ("cannot rollback - no transaction is active"), hiding the error that counts."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, DiskFull):
            return True
        if isinstance(x, OSError) and x.errno in _NO_SPACE:
            return True
        if isinstance(x, sqlite3.Error):
            code = getattr(x, "sqlite_errorcode", None)
            primary = None if code is None else code & 0xFF
            if primary == sqlite3.SQLITE_FULL or "database or disk is full" in str(x):
                return True
            if primary == sqlite3.SQLITE_IOERR and where is not None and _low_space(where):
                return True
        todo += [x.__cause__, x.__context__]
    return False


def _low_space(where: Path) -> bool:
    folder = where if where.is_dir() else where.parent
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < LOW_SPACE


def abandon(db: sqlite3.Connection) -> None:
    """Undo a transaction that failed. After some errors (SQLITE_FULL at COMMIT among them)
    SQLite has rolled it back already: a ROLLBACK then fails with "no transaction is active",
    and must not replace the error that made the transaction fail."""
    if db.in_transaction:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
