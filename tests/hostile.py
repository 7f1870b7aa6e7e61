"""What an outsider with publish rights on the broker sends: raw CBOR built byte by byte (so no
encoder of ours can tidy it up), signed by a throwaway key where a signature gets it further,
and the means to run a process under a memory limit and read its peak.

Every builder returns bytes; none of them decodes what it builds.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.wire import cose
from gateway.wire.identity import Identity

# CBOR heads as RFC 8949 writes them, from the spec's independent reference code, not our encoder
from tests.vectors.reference import head as head


def text(s: str) -> bytes:
    b = s.encode()
    return head(3, len(b)) + b


def tag(number: int, item: bytes) -> bytes:
    return head(6, number) + item


def array(*items: bytes) -> bytes:
    return head(4, len(items)) + b"".join(items)


def throwaway() -> Identity:
    """A key nobody registered: a fresh one each call."""
    return Identity.from_private_key(Ed25519PrivateKey.generate())


def signed(payload: bytes, typ: str = cose.TYP_BATCH, ident: Identity | None = None) -> bytes:
    """A valid COSE_Sign1 around any payload bytes (the payload is not looked at)."""
    return cose.sign1(ident or throwaway(), typ, payload)


def batch_map(ident: Identity, records: bytes) -> bytes:
    """A batch payload's map with the signer's did, whatever `records` (key 5) holds; the
    other fields are plausible so only the records are wrong."""
    fields = [
        (1, text(ident.did)),
        (2, head(0, 0)),
        (3, head(2, 32) + bytes(32)),
        (5, records),
    ]
    return head(5, len(fields)) + b"".join(head(0, k) + v for k, v in fields)


# --- the classes of hostile payloads -----------------------------------------------------------


def sharing_bomb(depth: int = 31) -> bytes:
    """Value-sharing tags (28 shareable, 29 sharedref): each level is a shared array holding the
    level below twice, once by reference. About 6 bytes per level; decoded into a DAG, anything
    that walks or re-encodes it as a tree does 2**depth work."""
    # The decoder numbers shareables in the order their tags are met: the outermost (level
    # `depth`) is 0, so level k has index depth - k and refers to level k - 1 by depth - k + 1.
    item = tag(28, array())  # level 1
    for k in range(2, depth + 1):
        item = tag(28, array(item, tag(29, head(0, depth - k + 1))))
    return item


def self_reference() -> bytes:
    """An array that contains itself (tag 28 around [tag 29(0)]): a cycle in Python objects."""
    return tag(28, array(tag(29, head(0, 0))))


def unknown_tags() -> dict[str, bytes]:
    """Tags cbor2 turns into Python objects (or fails on) rather than leaving as CBORTag."""
    return {
        "set": tag(258, array(head(0, 1), head(0, 2))),
        "decimal": tag(4, array(head(0, 2), head(0, 5))),
        "datetime-overflow": tag(1, bytes([0xFB]) + (0x7E37E43C8800759C).to_bytes(8, "big")),
        "bignum": tag(2, head(2, 64) + b"\xff" * 64),
        "regex-bad": tag(35, text("(")),
        "string-ref": tag(256, array(text("abc"), tag(25, head(0, 0)))),
        "uuid-bad": tag(37, head(2, 3) + b"abc"),
    }


def deep_nesting(depth: int = 100_000) -> bytes:
    """[[[[...0...]]]]: one byte per level."""
    return b"\x81" * depth + b"\x00"


def huge_lengths() -> dict[str, bytes]:
    """Heads that declare far more than the message holds."""
    return {
        "bytes": head(2, 2**62) + b"x",
        "text": head(3, 2**40) + b"x",
        "array": head(4, 2**32 - 1) + b"\x00",
        "map": head(5, 2**31) + b"\x00\x00",
    }


def oversized(n: int) -> bytes:
    """A byte string of n bytes in all: well-formed CBOR, just big."""
    body = n - len(head(2, n))
    return head(2, body) + b"\x00" * body


# --- running a process under a memory limit ----------------------------------------------------


def memory_limit(max_bytes: int) -> Callable[[], None]:
    """A preexec_fn for subprocess.Popen: the child's address space is capped, so an attack on
    memory ends in a MemoryError (or the process dying), never in the test machine swapping."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (max_bytes, max_bytes))

    return limit


def _status(pid: int, field: str) -> int:
    """A `kB` field of /proc/<pid>/status in bytes; 0 when the process is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM) in bytes; 0 when it is gone."""
    return _status(pid, "VmHWM")


def rss(pid: int) -> int:
    """The process's resident set now (VmRSS) in bytes; 0 when it is gone."""
    return _status(pid, "VmRSS")


# Runs a module as `python -m` would and, when it exits, writes its own peak resident set
# (VmHWM) to the file named first. A child's ru_maxrss cannot be had instead: Linux carries the
# forking parent's resident set over exec into it, and a test process is often hundreds of MB.
_PEAK_AT_EXIT = """
import atexit, runpy, sys
peak_file, module = sys.argv[1], sys.argv[2]

def report() -> None:
    with open("/proc/self/status") as f:
        hwm = next(line for line in f if line.startswith("VmHWM:"))
    with open(peak_file, "w") as out:
        out.write(str(int(hwm.split()[1]) * 1024))

atexit.register(report)
sys.argv = [module, *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


class Measured:
    """`python -m <module> <args>` under an address-space limit, its output piped (text), and
    its own peak resident set known once it exited normally."""

    def __init__(self, module: str, *args: str, limit: int) -> None:
        fd, name = tempfile.mkstemp(prefix="peak-")
        os.close(fd)
        self.peak_file = Path(name)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _PEAK_AT_EXIT, name, module, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=memory_limit(limit),
        )

    def poll(self) -> int | None:
        return self.proc.poll()

    def finish(self, timeout: float) -> tuple[int, str, str, int]:
        """Exit code, stdout, stderr and the peak resident set in bytes (0 when the process
        did not exit by itself: killed, it wrote nothing)."""
        try:
            out, err = self.proc.communicate(timeout=timeout)
            text = self.peak_file.read_text()
        finally:
            self.peak_file.unlink(missing_ok=True)
        return self.proc.returncode, out, err, int(text) if text else 0
