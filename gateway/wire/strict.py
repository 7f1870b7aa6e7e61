"""CBOR from anyone, judged from its bytes before any Python object is built.

cbor2 builds what the bytes describe: value-sharing tags (28/29) give a graph that grows
exponentially when walked or re-encoded, other tags give sets, decimals, dates or errors, and a
declared length is believed until the bytes run out. So every untrusted CBOR item is first
scanned here, in one pass over its bytes with no recursion: well-formed, definite lengths only,
each declared length within what remains, nesting and the numbers of items and of arrays and
maps bounded (so the objects it becomes are too), and no tag but the ones the caller allows.
Only an item that passes is handed to cbor2.

With `deterministic=True` the same pass also checks spec section 7 on the bytes themselves, so
nothing untrusted is ever re-encoded to compare: shortest heads, map keys sorted bytewise and
unique, floats in their shortest exact form, no integral float below 2^64
(it is an integer), no NaN or infinity.
"""

from __future__ import annotations

import struct
from typing import Any

import cbor2

#: Deeper than any message of the spec (a birth: map, sensors, sensor, quantities = 4).
MAX_DEPTH = 16
#: Items (each head counts once), and arrays plus maps, in one item: what bounds the Python
#: objects a message may become whatever its size (a map of one pair costs about 400 bytes, a
#: short text or a float about 60: some 35 MB at most). Counted as each container declares them,
#: so the loop over items pays nothing for it. The most an honest batch holds (10,000 records,
#: the largest batch_max_readings, with three flags on each) is 160,000 items and 20,000 arrays
#: and maps: less than half of each bound.
MAX_ITEMS = 5 << 16  # 327,680
MAX_CONTAINERS = 1 << 16
_NO_TAGS: frozenset[int] = frozenset()
_HALF, _SINGLE = struct.Struct(">e"), struct.Struct(">f")
_DOUBLE = struct.Struct(">d")


class DecodeError(ValueError):
    """Bytes that are not one strict CBOR item; the message names the byte offset. `kind` is
    the verifier's name for it: "malformed", or with `deterministic` also "non-deterministic"
    and "nan"."""

    def __init__(self, detail: str, kind: str = "malformed") -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


_FLOAT_FORMS = {25: (5, 10, 15, _HALF), 26: (8, 23, 127, _SINGLE), 27: (11, 52, 1023, _DOUBLE)}


def _float_problem(bits: int, ai: int, at: int) -> DecodeError | None:
    """Why the float with these `bits` (head 0xf9/0xfa/0xfb, at byte `at`) is not in the form
    spec section 7 wants, or None. Judged on the bits: no float object unless one is needed."""
    ebits, mbits, bias, form = _FLOAT_FORMS[ai]
    e = (bits >> mbits) & ((1 << ebits) - 1)
    m = bits & ((1 << mbits) - 1)
    if e == (1 << ebits) - 1:
        x = form.unpack(bits.to_bytes(form.size, "big"))[0]
        return DecodeError(f"byte {at}: {x} is not allowed (spec section 7)", "nan")
    if e == 0:
        integral = m == 0  # zero or -0.0; the other subnormals are below 1
    else:
        exp = e - bias
        integral = exp < 64 and (exp >= mbits or (exp >= 0 and m & ((1 << (mbits - exp)) - 1) == 0))
    if integral:
        x = form.unpack(bits.to_bytes(form.size, "big"))[0]
        return DecodeError(f"byte {at}: the float {x!r} is an integer", _NONDET)
    # A narrower form holds the value only when the low mantissa bits it lacks are zero.
    narrower = _HALF if ai == 26 else _SINGLE
    if ai > 25 and m & ((1 << (mbits - (10 if ai == 26 else 23))) - 1) == 0:
        x = form.unpack(bits.to_bytes(form.size, "big"))[0]
        try:
            fits = narrower.unpack(narrower.pack(x))[0] == x
        except OverflowError:
            fits = False
        if fits:
            return DecodeError(f"byte {at}: {x!r} has a shorter float form", _NONDET)
    return None


def _sure_masks(ebits: int, mbits: int, bias: int, narrower_mbits: int) -> list[int]:
    """Per exponent field value: a mask of mantissa bits of which any one set proves the float
    in its shortest form (not integral, no narrower form holds it), so most floats are judged
    with one AND; 0 where the bits prove nothing and `_float_problem` decides."""
    out = []
    for e in range(1 << ebits):
        exp = e - bias
        if e == (1 << ebits) - 1 or exp >= mbits:
            out.append(0)  # NaN, infinities, and floats without a fraction bit
            continue
        if not narrower_mbits and e and exp < 0:
            out.append((1 << (1 + ebits + mbits)) - 1)  # a half below 1: never an integer
            continue
        # fraction bits (integral needs them all zero); bits a narrower form lacks
        frac = mbits if e == 0 or exp < 0 else mbits - exp
        lost = mbits - narrower_mbits if narrower_mbits else mbits
        out.append((1 << min(frac, lost)) - 1)
    return out


# a half has no narrower form: any fraction bit settles it; below 1, any nonzero value does
_SURE = {
    25: _sure_masks(5, 10, 15, 0),
    26: _sure_masks(8, 23, 127, 10),
    27: _sure_masks(11, 52, 1023, 23),
}


def scan(
    data: bytes,
    *,
    tags: frozenset[int] = _NO_TAGS,
    max_depth: int = MAX_DEPTH,
    deterministic: bool = False,
    marks: list[list[tuple[int, int]]] | None = None,
) -> None:
    """Raise DecodeError unless `data` is exactly one well-formed, definite-length CBOR item
    within the bounds, whose only tags are in `tags` (and, with `deterministic`, encoded as
    spec section 7 says). Builds nothing.

    `marks`, when given, receives the (start, end) byte offsets of each array, map or tag of
    nesting depth d in marks[d], for d < len(marks) (the item itself is depth 0), in order: a
    caller can slice the parts of the item out of `data` without reading them again."""
    end = len(data)
    try:
        pos = _walk(data, end, tags, max_depth, deterministic, marks or [])
    except IndexError:
        raise DecodeError(f"byte {end}: the item ends early") from None
    if pos > end:  # a short string's bytes are counted, not looked for: see _PLAIN
        raise DecodeError(f"byte {end}: the item ends early")
    if pos != end:
        raise DecodeError(f"byte {pos}: {end - pos} bytes after the item")


# argument bytes after a head of additional information 24-27, and the least argument that
# needs them (a smaller one has a shorter head)
_SIZE = {24: 1, 25: 2, 26: 4, 27: 8}
_SHORTEST = {24: 24, 25: 1 << 8, 26: 1 << 16, 27: 1 << 32}
_NONDET = "non-deterministic"

#: Per initial byte, the whole length of an item that is settled by that byte alone: integers
#: below 24, byte and text strings shorter than 24 (head and content), false, true and null;
#: 0 for every other byte. Most items of a payload are these, and the loop only steps over
#: them. A string that runs past the end is caught after: the next read fails, or the scan
#: ends beyond the data.
_PLAIN = tuple(
    1 if ib < 0x18 or 0x20 <= ib < 0x38 or 0xF4 <= ib <= 0xF6
    else (1 + (ib & 0x1F) if 0x40 <= ib < 0x58 or 0x60 <= ib < 0x78 else 0)
    for ib in range(256)
)  # fmt: skip
#: Per float head (0xf9, 0xfa, 0xfb): its argument bytes, its mantissa bits, and the table of
#: masks by sign-and-exponent that proves the float shortest with one AND (`_sure_masks`).
_FLOATS = tuple(
    (size, mbits, _SURE[ai] * 2)  # the sign bit leaves the exponent's mask unchanged
    for ai, size, mbits in ((25, 2, 10), (26, 4, 23), (27, 8, 52))
)


def _walk(
    data: bytes,
    end: int,
    tags: frozenset[int],
    max_depth: int,
    det: bool,
    marks: list[list[tuple[int, int]]],
) -> int:
    """The scan itself; returns the offset after the item. The open level's state lives in
    locals (the hot loop reads no stack): `left` items to read (pairs, in a map), whether it is
    a map, and the first byte and the bytes of its last key; outer levels wait on `stack`. A
    map's key and its value are read in one turn of the loop."""
    plain, floats, from_bytes = _PLAIN, _FLOATS, int.from_bytes
    stack: list[tuple[int, bool, int, int, int, int]] = []
    push, pop = stack.append, stack.pop
    n_marks = len(marks)
    items, containers = 1, 0  # counted as each container declares them
    # kb: the first byte of the map's last key (-1 before its first); c0: where the open
    # container starts
    left, is_map, kb, k0, k1, c0 = 1, False, -1, 0, 0, 0
    pos = 0
    while True:
        if not left:
            if not stack:
                return pos
            if len(stack) <= n_marks:
                marks[len(stack) - 1].append((c0, pos))
            left, is_map, kb, k0, k1, c0 = pop()
            continue
        left -= 1
        if is_map:
            at = pos
            ib = data[pos]
            n = plain[ib]
            pos = pos + n if n else _key(data, pos, end, det, tags, len(stack), max_depth)
            if det:
                # Keys whose first bytes differ are ordered by them (most keys are one byte).
                if ib <= kb and (ib < kb or data[k0:k1] >= data[at:pos]):
                    if pos > end:
                        raise IndexError  # the key ran past the end: not a question of order
                    raise DecodeError(
                        f"byte {at}: map keys not in ascending bytewise order (or repeated)",
                        _NONDET,
                    )
                kb, k0, k1 = ib, at, pos
        # the item, or the value of the key just read
        ib = data[pos]
        n = plain[ib]
        if n:
            pos += n
            continue
        at = pos
        if 0xF9 <= ib <= 0xFB:
            size, mbits, sure = floats[ib - 0xF9]
            pos += 1 + size
            if pos > end:
                raise IndexError
            if det:
                arg = from_bytes(data[at + 1 : pos], "big")
                if not arg & sure[arg >> mbits]:
                    problem = _float_problem(arg, ib & 0x1F, at)
                    if problem is not None:
                        raise problem
            continue
        major = ib >> 5
        if major != 4 and major != 5 and major != 6:
            pos = _leaf(data, pos, end, det)
            continue
        ai = ib & 0x1F
        if ai < 24:
            arg = ai
            pos += 1
        else:
            arg, pos = _argument(data, pos, end, det)
        if major == 6:
            if arg not in tags:
                raise DecodeError(f"byte {at}: CBOR tag {arg} is not allowed here")
            n = 1
        else:
            n = arg if major == 4 else 2 * arg
            if n > end - pos:  # every item takes a byte at least
                if pos > end:
                    raise IndexError
                raise DecodeError(f"byte {at}: declares {n} items, {end - pos} bytes remain")
            containers += 1
        items += n
        if items > MAX_ITEMS or containers > MAX_CONTAINERS:
            raise DecodeError(_too_many(at, items, containers))
        if len(stack) >= max_depth:
            raise DecodeError(f"byte {at}: nested deeper than {max_depth}")
        push((left, is_map, kb, k0, k1, c0))
        left, is_map, kb, c0 = arg if major != 6 else 1, major == 5, -1, at


def _argument(data: bytes, pos: int, end: int, det: bool) -> tuple[int, int]:
    """The argument of the head at `pos` whose additional information is 24 or more, and the
    offset after the head; DecodeError for a reserved or indefinite one, or (with `det`) one
    longer than its argument needs."""
    ib = data[pos]
    ai = ib & 0x1F
    if ai < 28:
        size = _SIZE[ai]
        if pos + 1 + size > end:
            raise DecodeError(f"byte {pos}: the head ends early")
        arg = int.from_bytes(data[pos + 1 : pos + 1 + size], "big")
        if det and arg < _SHORTEST[ai] and ib < 0xE0:
            raise DecodeError(f"byte {pos}: the head is not in its shortest form", _NONDET)
        return arg, pos + 1 + size
    if ai == 31:
        # not well-formed for this reader; in a payload, not the deterministic encoding
        kind = _NONDET if det else "malformed"
        raise DecodeError(f"byte {pos}: indefinite length (spec section 7)", kind)
    raise DecodeError(f"byte {pos}: reserved head {ib:#04x}")


def _leaf(data: bytes, pos: int, end: int, det: bool) -> int:
    """Past the item at `pos` that is neither an array, a map nor a tag, and not settled by its
    first byte (`_PLAIN`): a long string, a large integer, a float or a simple value. Returns
    the offset after it; DecodeError when it breaks a rule."""
    at = pos
    ib = data[pos]
    if 0xF9 <= ib <= 0xFB:
        size, mbits, sure = _FLOATS[ib - 0xF9]
        pos += 1 + size
        if pos > end:
            raise IndexError
        if det:
            arg = int.from_bytes(data[at + 1 : pos], "big")
            if not arg & sure[arg >> mbits]:
                problem = _float_problem(arg, ib & 0x1F, at)
                if problem is not None:
                    raise problem
        return pos
    if 0xE0 <= ib <= 0xF8:
        # false, true and null only (they are _PLAIN): "undefined" and unassigned simple
        # values have no place in the spec, and cbor2 turns them into objects of its own
        arg = ib & 0x1F if ib < 0xF8 else data[pos + 1]
        raise DecodeError(f"byte {at}: simple value {arg} is not allowed")
    arg, pos = _argument(data, pos, end, det)
    if ib >= 0x40:  # a byte or text string (0xfc-0xff are refused by _argument)
        if arg > end - pos:
            raise DecodeError(f"byte {at}: declares {arg} bytes, {end - pos} remain")
        pos += arg
    return pos


def _key(
    data: bytes, pos: int, end: int, det: bool, tags: frozenset[int], depth: int, max_depth: int
) -> int:
    """Past the map key at `pos` that `_PLAIN` does not settle. An array, a map or a tag is
    refused, after the checks of its head that any item gets (so the finding is the same
    whatever the item's place)."""
    ib = data[pos]
    major = ib >> 5
    if major < 4 or major == 7:
        return _leaf(data, pos, end, det)
    ai = ib & 0x1F
    arg, after = (ai, pos + 1) if ai < 24 else _argument(data, pos, end, det)
    if major == 6:
        if arg not in tags:
            raise DecodeError(f"byte {pos}: CBOR tag {arg} is not allowed here")
        raise DecodeError(f"byte {pos}: a map key must not be tagged")
    n = arg if major == 4 else 2 * arg
    if n > end - after:
        if after > end:
            raise IndexError
        raise DecodeError(f"byte {pos}: declares {n} items, {end - after} bytes remain")
    if depth >= max_depth:
        raise DecodeError(f"byte {pos}: nested deeper than {max_depth}")
    raise DecodeError(f"byte {pos}: a map key must not be an array or a map")


def _too_many(at: int, items: int, containers: int) -> str:
    if containers > MAX_CONTAINERS:
        return f"byte {at}: more than {MAX_CONTAINERS} arrays and maps"
    return f"byte {at}: declares {items} items so far, more than {MAX_ITEMS}"


def loads(
    data: bytes,
    *,
    tags: frozenset[int] = _NO_TAGS,
    max_depth: int = MAX_DEPTH,
    deterministic: bool = False,
    marks: list[list[tuple[int, int]]] | None = None,
) -> Any:
    """`data` as Python objects, once `scan` passed it; DecodeError otherwise. Never raises
    anything else on any input."""
    scan(data, tags=tags, max_depth=max_depth, deterministic=deterministic, marks=marks)
    try:
        return cbor2.loads(data)
    except Exception as e:  # scanned bytes that cbor2 still refuses: say so, never raise it
        raise DecodeError(f"not decodable: {e}") from None


def is_deterministic(data: bytes) -> bool:
    """True when `data` is one tag-free CBOR item in the encoding of spec section 7."""
    try:
        scan(data, deterministic=True)
    except DecodeError:
        return False
    return True
