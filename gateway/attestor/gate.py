"""The cheap checks made in paho's thread, before a message is queued: which signer, if any, a
message provably comes from, without decoding anything it carries.

A COSE_Sign1 of the spec is a fixed shape: tag 18, an array of four, a byte string (the
protected header), the empty map, a byte string (the payload) and a byte string of 64 (the
signature), and nothing after. That shape is read here from the heads alone; only a message of
that shape has its small protected header decoded and its signature checked. Anything else is
nobody's, and goes to the junk lane, where the worker judges it when it has nothing better to do.

A signed message goes to the priority lane only on its signer's own topic: anyone can copy a
registered device's batch and publish it elsewhere. And a message this worker has stored already
(`Recent`) is not judged again at all: a replay costs a hash and a look-up, not a decode, a
signature check and a store transaction.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass

from gateway.core.errors import VerifyError
from gateway.wire import cose
from gateway.wire.identity import did_of

#: message ids a worker remembers having stored (some 200 bytes each)
RECENT = 100_000

_TAG18_ARRAY4 = b"\xd2\x84"
_EMPTY_MAP = 0xA0


def _bstr(data: bytes, pos: int) -> int | None:
    """The end of the byte string whose head is at `pos`, or None when there is none."""
    if pos >= len(data) or data[pos] >> 5 != 2:
        return None
    ai = data[pos] & 0x1F
    pos += 1
    if ai < 24:
        n = ai
    elif ai < 28:
        size = 1 << (ai - 24)
        if pos + size > len(data):
            return None
        n = int.from_bytes(data[pos : pos + size], "big")
        pos += size
    else:
        return None
    return pos + n if pos + n <= len(data) else None


def is_envelope(message: bytes) -> bool:
    """Whether `message` has the shape of a spec COSE_Sign1 (nothing is decoded)."""
    if not message.startswith(_TAG18_ARRAY4):
        return False
    pos = _bstr(message, 2)
    if pos is None or pos >= len(message) or message[pos] != _EMPTY_MAP:
        return False
    pos = _bstr(message, pos + 1)
    if pos is None or not message.startswith(b"\x58\x40", pos):
        return False
    return _bstr(message, pos) == len(message)


def signer(message: bytes) -> str | None:
    """The did whose key signed `message`, when it is a COSE_Sign1 of the spec whose signature
    verifies; None otherwise. Never raises."""
    if not is_envelope(message):
        return None
    try:
        return did_of(cose.verify1(message).public_key)
    except VerifyError:
        return None
    except Exception:  # the worker's own checks judge it (and say why) in the junk lane
        return None


def topic_device(topic: str) -> str:
    """The device id a topic `{prefix}/{device id}/{kind}` names ("" when it names none)."""
    parts = topic.rsplit("/", 2)
    return parts[1] if len(parts) == 3 else ""


def key_of(message: bytes) -> bytes:
    """What `Recent` knows a message by: the sha256 of all its bytes, signature included (the
    batch id hashes the payload alone; only a byte-for-byte copy is the same message here)."""
    return hashlib.sha256(message).digest()


@dataclass(frozen=True, slots=True)
class Seen:
    """A message stored before: its signer and whether it was a batch (else a birth)."""

    did: str
    device: str
    batch: bool


class Recent:
    """The last `size` messages this worker stored (or found stored), least recently seen
    forgotten first. Read in paho's thread, filled in the worker's. Forgetting only costs time:
    a message not found here takes the full path, which the store keeps idempotent (another
    worker's batches, and everything after a restart, are judged once more there)."""

    def __init__(self, size: int = RECENT) -> None:
        self.size = size
        self._seen: OrderedDict[bytes, Seen] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._seen)

    def get(self, key: bytes) -> Seen | None:
        with self._lock:
            seen = self._seen.get(key)
            if seen is not None:
                self._seen.move_to_end(key)
            return seen

    def add(self, key: bytes, seen: Seen) -> None:
        with self._lock:
            self._seen[key] = seen
            self._seen.move_to_end(key)
            while len(self._seen) > self.size:
                self._seen.popitem(last=False)
