"""The cheap checks made in paho's thread, before a message is queued: which signer, if any, a
message provably comes from, without decoding anything it carries.

A COSE_Sign1 of the spec is a fixed shape: tag 18, an array of four, a byte string (the
protected header), the empty map, a byte string (the payload) and a byte string of 64 (the
signature), and nothing after. That shape is read here from the heads alone; only a message of
that shape has its small protected header decoded and its signature checked. Anything else is
nobody's, and goes to the junk lane, where the worker judges it when it has nothing better to do.
"""

from __future__ import annotations

from gateway.core.errors import VerifyError
from gateway.wire import cose
from gateway.wire.identity import did_of

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
