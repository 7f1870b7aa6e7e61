"""CBOR from anyone, judged from its bytes before any Python object is built.

cbor2 builds what the bytes describe: value-sharing tags (28/29) give a graph that grows
exponentially when walked or re-encoded, other tags give sets, decimals, dates or errors, and a
declared length is believed until the bytes run out. So every untrusted CBOR item is first
scanned here, in one pass over its bytes with no recursion: well-formed, definite lengths only,
each declared length within what remains, nesting and item count bounded, and no tag but the
ones the caller allows. Only an item that passes is handed to cbor2.
"""

from __future__ import annotations

from typing import Any

import cbor2

#: Deeper than any message of the spec (a batch: map, records, record, flags, text = 4).
MAX_DEPTH = 16
#: Items (each head counts once); a message of n bytes holds at most n, so this bounds the
#: work for the largest messages only.
MAX_ITEMS = 1 << 22
_NO_TAGS: frozenset[int] = frozenset()


class DecodeError(ValueError):
    """Bytes that are not one strict CBOR item; the message names the byte offset."""


def scan(data: bytes, *, tags: frozenset[int] = _NO_TAGS, max_depth: int = MAX_DEPTH) -> None:
    """Raise DecodeError unless `data` is exactly one well-formed, definite-length CBOR item
    within the bounds, whose only tags are in `tags`. Builds nothing."""
    end = len(data)
    pos = 0
    items = 0
    todo = [1]  # items still to read at each open nesting level
    while todo:
        if todo[-1] == 0:
            todo.pop()
            continue
        todo[-1] -= 1
        if pos >= end:
            raise DecodeError(f"byte {pos}: the item ends early")
        at = pos
        ib = data[pos]
        pos += 1
        major, ai = ib >> 5, ib & 0x1F
        if ai < 24:
            arg = ai
        elif ai < 28:
            size = 1 << (ai - 24)
            if pos + size > end:
                raise DecodeError(f"byte {at}: the head ends early")
            arg = int.from_bytes(data[pos : pos + size], "big")
            pos += size
        elif ai == 31:
            raise DecodeError(f"byte {at}: indefinite length")
        else:
            raise DecodeError(f"byte {at}: reserved head {ib:#04x}")
        items += 1
        if items > MAX_ITEMS:
            raise DecodeError(f"byte {at}: more than {MAX_ITEMS} items")
        if major in (2, 3):
            if arg > end - pos:
                raise DecodeError(f"byte {at}: declares {arg} bytes, {end - pos} remain")
            pos += arg
        elif major in (4, 5):
            n = arg if major == 4 else 2 * arg
            if n > end - pos:  # every item takes a byte at least
                raise DecodeError(f"byte {at}: declares {n} items, {end - pos} bytes remain")
            if len(todo) > max_depth:
                raise DecodeError(f"byte {at}: nested deeper than {max_depth}")
            todo.append(n)
        elif major == 6:
            if arg not in tags:
                raise DecodeError(f"byte {at}: CBOR tag {arg} is not allowed here")
            todo.append(1)
        elif major == 7 and (ai == 24 or (ai < 24 and arg not in (20, 21, 22))):
            # false, true and null only: "undefined" and unassigned simple values have no
            # place in the spec, and cbor2 turns them into objects of its own
            raise DecodeError(f"byte {at}: simple value {arg} is not allowed")
    if pos != end:
        raise DecodeError(f"byte {pos}: {end - pos} bytes after the item")


def loads(data: bytes, *, tags: frozenset[int] = _NO_TAGS, max_depth: int = MAX_DEPTH) -> Any:
    """`data` as Python objects, once `scan` passed it; DecodeError otherwise. Never raises
    anything else on any input."""
    scan(data, tags=tags, max_depth=max_depth)
    try:
        return cbor2.loads(data)
    except Exception as e:  # scanned bytes that cbor2 still refuses: say so, never raise it
        raise DecodeError(f"not decodable: {e}") from None
