"""Replacing a file so that a reader (or a power cut) sees the old one or the new one whole."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a rename in `path` durable. FAT (the Pi's boot partition) and some other file
    systems refuse fsync on a directory; the rename is done anyway."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(
    path: Path,
    data: bytes,
    *,
    mode: int | None = None,
    gid: int | None = None,
    durable: bool = True,
) -> None:
    """Write `data` to a temporary file of its own beside `path` (two writers never tear each
    other's file), then rename it over `path`. `mode` and `gid` are set on the file before the
    rename; `durable` fsyncs the file and the directory (off for tmpfs, where it buys nothing)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            if gid is not None:
                with contextlib.suppress(PermissionError):
                    os.fchown(f.fileno(), -1, gid)
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
