"""One gateway per spool and per device key: an exclusive flock(2), held while the spool is open.

Two gateways on one spool, or on one key with two spools, would sign different batches under
the same seq (equivocation). The second one must therefore refuse at start, before it opens,
signs or writes anything.

flock, not fcntl (POSIX) locks: a process loses its fcntl lock when it closes *any* descriptor
of the file (SQLite opens and closes the spool's files as it likes), and an fcntl write lock
needs a descriptor open for writing, which a read-only key file (a systemd credential) does not
give. The kernel drops a flock when its holder dies, so a power cut or a kill -9 never leaves a
stale lock behind; lock files are therefore never deleted (deleting one while another process
waits on it would let two processes hold "the" lock on two different files).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from gateway.core.errors import SpoolError


class Held:
    """A lock this process holds; `release` (or the process's end) gives it up."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor releases the flock
            self._fd = None


def lock(path: Path, *, what: str, lock_file: Path | None = None) -> Held:
    """Lock `what` (a text naming `path` for the message) through `lock_file`, or through
    `path` itself when `lock_file` is None (opened read-only, never written). A lock file is
    created when missing and gets the holder's pid, for the message another process shows.
    Raises SpoolError naming the holder when another process has it."""
    target = lock_file or path
    flags = os.O_RDWR | os.O_CREAT if lock_file is not None else os.O_RDONLY
    try:
        fd = os.open(target, flags | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise SpoolError(f"{what} {path}: cannot open {target} to lock it: {e}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = holder(fd) or (_written_pid(fd) if lock_file is not None else None)
        os.close(fd)
        who = f" (pid {pid})" if pid else ""
        through = f", locked through {target}" if lock_file is not None else ""
        raise SpoolError(
            f"{what} {path} is in use by another gateway process{who}{through}. Two gateways "
            f"on one spool or one key would sign different batches under the same seq; this "
            f"one stops without touching anything. Stop the other one first (or give this one "
            f"its own key and spool)."
        ) from None
    except OSError as e:
        os.close(fd)
        raise SpoolError(f"{what} {path}: cannot lock {target}: {e}") from None
    if lock_file is not None:
        # For people and for the message of a second process; not needed for the lock itself.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return Held(target, fd)


def holder(fd: int) -> int | None:
    """The pid holding a flock on the file of `fd`, from /proc/locks (Linux); None if unknown."""
    st = os.fstat(fd)
    inode = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF"; "->" lines are waiters.
        parts = line.split()
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[5] == inode:
            with contextlib.suppress(ValueError):
                pid = int(parts[4])
                if pid > 0:
                    return pid
    return None


def _written_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
