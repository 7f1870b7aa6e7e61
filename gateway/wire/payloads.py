"""The signed payloads of spec sections 3-5: SenML records, batches and birth messages.

Records are encoded once, when a reading is spooled, and embedded verbatim in the batch: the
Merkle leaf of a reading is those exact bytes, so a record never changes after it is stored.
"""

from __future__ import annotations

import io
import itertools
import math
import operator
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import cbor2

from gateway.wire import dcbor, merkle

# SenML CBOR labels (RFC 8428 section 6) and the spec's extension labels.
N, U, V, T = 0, 1, 2, 6
SCORE, FLAGS = "as", "af"
RECORD_KEYS = frozenset({N, U, V, T, SCORE, FLAGS})
BATCH_KEYS = frozenset(range(1, 11))
BATCH_REQUIRED = BATCH_KEYS - {9}
BIRTH_KEYS = frozenset(range(1, 9))
ZERO_PREV = bytes(32)


def encode_record(
    name: str, unit: str, value: float | None, t: float, score: float, flags: Sequence[str]
) -> bytes:
    """One SenML record, deterministically encoded. A failed reading has no value and a flag."""
    rec: dict[Any, Any] = {N: name, U: unit, T: dcbor.number(t), SCORE: dcbor.number(score)}
    if value is not None:
        rec[V] = dcbor.number(value)
    elif not flags:
        raise ValueError(f"{name}: a reading without a value needs a flag saying why")
    if flags:
        rec[FLAGS] = list(flags)
    return dcbor.dumps_normalised(rec)


def _head(major: int, n: int) -> bytes:
    """A CBOR item head in its shortest form (RFC 8949 section 4.2.1)."""
    mt = major << 5
    if n < 24:
        return bytes([mt | n])
    if n < 0x100:
        return bytes([mt | 24, n])
    if n < 0x10000:
        return bytes([mt | 25]) + struct.pack(">H", n)
    if n < 0x100000000:
        return bytes([mt | 26]) + struct.pack(">I", n)
    return bytes([mt | 27]) + struct.pack(">Q", n)


@dataclass(frozen=True)
class DropReceipt:
    n: int
    t_from: float
    t_to: float
    why: str

    def as_cbor(self) -> dict[str, Any]:
        return {"n": self.n, "from": self.t_from, "to": self.t_to, "why": self.why}


def encode_batch(
    *,
    did: str,
    seq: int,
    prev: bytes,
    sealed: float,
    records: Sequence[bytes],
    clock_synced: bool,
    clock_source: str,
    modules: Sequence[tuple[str, str, bytes]],
    dropped: Sequence[DropReceipt],
    boot: bytes,
) -> tuple[bytes, bytes]:
    """Build the batch payload of spec section 3 around already-encoded records.

    Returns (payload, root). The map is assembled by hand so the stored record bytes go in
    unchanged; keys 1..10 are single-byte heads, so ascending order is the canonical order."""
    if len(prev) != 32 or len(boot) != 16:
        raise ValueError("prev must be 32 bytes and boot 16 bytes")
    root = merkle.root(records)
    enc = dcbor.dumps
    parts = [
        b"\x01" + enc(did),
        b"\x02" + enc(seq),
        b"\x03" + enc(prev),
        b"\x04" + enc(sealed),
        b"\x05" + _head(4, len(records)) + b"".join(records),
        b"\x06" + enc(root),
        b"\x07" + enc({"synced": clock_synced, "source": clock_source}),
        b"\x08" + enc([[n, v, h] for n, v, h in modules]),
    ]
    if dropped:
        parts.append(b"\x09" + enc([d.as_cbor() for d in dropped]))
    parts.append(b"\x0a" + enc(boot))
    return _head(5, len(parts)) + b"".join(parts), root


def encode_birth(
    *,
    did: str,
    version: str,
    boot: bytes,
    started: float,
    config_sha256: bytes,
    sensors: Sequence[dict[str, Any]],
    modules: Sequence[tuple[str, str, bytes]],
    next_seq: int,
) -> bytes:
    return dcbor.dumps(
        {
            1: did,
            2: version,
            3: boot,
            4: started,
            5: config_sha256,
            6: list(sensors),
            7: [[n, v, h] for n, v, h in modules],
            8: next_seq,
        }
    )


# --- reading payloads back (verifiers) --------------------------------------------------------


class PayloadError(ValueError):
    """A payload breaks the spec; `kind` is the verifier's short name for the finding."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(f"{kind}: {detail}")


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def check_record(rec: Any, i: int) -> None:
    """Spec section 4: raise PayloadError naming what is wrong with record `i`."""
    if not isinstance(rec, dict):
        raise PayloadError("bad-record", f"record {i} is not a map")
    for k in rec:
        if isinstance(k, int) and k < 0:
            raise PayloadError("base-fields", f"record {i} uses base field label {k}")
        if k not in RECORD_KEYS or type(k) not in (int, str):  # true and 1.0 equal 1 in Python
            raise PayloadError("bad-record", f"record {i} has unknown label {k!r}")
    for k, v in rec.items():
        if isinstance(v, float) and not math.isfinite(v):
            raise PayloadError("nan", f"record {i} label {k!r} is {v}")
    name, unit, t = rec.get(N), rec.get(U), rec.get(T)
    if not isinstance(name, str) or not name:
        raise PayloadError("bad-record", f"record {i} has no name")
    if not isinstance(unit, str) or not unit:
        raise PayloadError("bad-record", f"record {i} ({name}) has no unit")
    if not _is_number(t):
        raise PayloadError("bad-record", f"record {i} ({name}) has no time")
    flags = rec.get(FLAGS)
    if flags is not None and (
        not isinstance(flags, list) or not flags or not all(isinstance(f, str) for f in flags)
    ):
        raise PayloadError(
            "bad-record", f"record {i} ({name}) flags must be a non-empty text array"
        )
    if V in rec:
        if not _is_number(rec[V]):
            raise PayloadError("bad-record", f"record {i} ({name}) value is not a number")
    elif not flags:
        raise PayloadError("bad-record", f"record {i} ({name}) has neither value nor flag")
    if SCORE in rec and not (_is_number(rec[SCORE]) and 0 <= rec[SCORE] <= 1):
        raise PayloadError("bad-record", f"record {i} ({name}) score outside [0, 1]")


@dataclass(frozen=True)
class Batch:
    did: str
    seq: int
    prev: bytes
    sealed: float
    records: list[dict[Any, Any]]
    record_bytes: list[bytes]
    root: bytes
    clock: dict[str, Any]
    modules: list[Any]
    dropped: list[dict[str, Any]]
    boot: bytes
    #: True when decoding proved the payload holds no CBOR tag (spec section 7), so a caller
    #: need not walk the bytes again; False means "not known", never "has a tag".
    tag_free: bool = field(default=False, compare=False)


_NOT_DECODED: Any = object()


def decode_batch(payload: bytes, *, decoded: Any = _NOT_DECODED) -> Batch:
    """Decode and check a batch payload (spec sections 3, 4, 7 and 9 step 4).

    Same answers as `decode_batch_reference`, faster: a batch of ordinary records is checked
    and re-encoded by cbor2's C code in bulk (`_fast`); anything else, and every batch that
    is to be rejected, goes through the reference code, so findings and their details never
    depend on which path ran. A caller that already ran `cbor2.loads(payload)` may pass the
    result as `decoded` (unchanged) to save decoding it again."""
    m = _batch_map(payload, decoded)
    return _fast(payload, m) or _reference(payload, m)


def decode_batch_reference(payload: bytes) -> Batch:
    """The plain reading of the spec, kept as the definition `decode_batch` is tested against:
    check every record, re-encode the whole payload deterministically, compare, re-encode
    every record for its Merkle leaf."""
    return _reference(payload, _batch_map(payload))


def _batch_map(payload: bytes, decoded: Any = _NOT_DECODED) -> dict[Any, Any]:
    """Decode the payload and check the batch fields' presence and types (not the records)."""
    m = decoded
    if m is _NOT_DECODED:
        try:
            m = cbor2.loads(payload)
        except Exception as e:
            raise PayloadError("malformed", f"payload is not CBOR: {e}") from None
    if not isinstance(m, dict):
        raise PayloadError("malformed", "payload is not a map")
    unknown = {k for k in m if k not in BATCH_KEYS or type(k) is not int}
    if unknown:
        raise PayloadError("malformed", f"unknown batch keys {sorted(map(str, unknown))}")
    missing = BATCH_REQUIRED - set(m)
    if missing:
        raise PayloadError("malformed", f"missing batch keys {sorted(missing)}")
    did, seq, prev, sealed = m[1], m[2], m[3], m[4]
    records, root, clock, modules, boot = m[5], m[6], m[7], m[8], m[10]
    if not isinstance(did, str):
        raise PayloadError("malformed", "did is not text")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise PayloadError("malformed", "seq is not an unsigned integer")
    if not isinstance(prev, bytes) or len(prev) != 32:
        raise PayloadError("malformed", "prev is not 32 bytes")
    if not _is_number(sealed) or (isinstance(sealed, float) and not math.isfinite(sealed)):
        raise PayloadError("nan" if isinstance(sealed, float) else "malformed", "bad sealed time")
    if not isinstance(records, list):
        raise PayloadError("malformed", "records is not an array")
    if not isinstance(root, bytes) or len(root) != 32:
        raise PayloadError("malformed", "root is not 32 bytes")
    if not isinstance(clock, dict) or not isinstance(clock.get("synced"), bool):
        raise PayloadError("malformed", "clock must be {synced: bool, source: text}")
    if not isinstance(modules, list):
        raise PayloadError("malformed", "modules is not an array")
    if not isinstance(boot, bytes) or len(boot) != 16:
        raise PayloadError("malformed", "boot is not 16 bytes")
    dropped = m.get(9)
    if dropped is not None and (not isinstance(dropped, list) or not dropped):
        raise PayloadError("malformed", "dropped must be a non-empty array when present")
    return m


def _batch(m: dict[Any, Any], record_bytes: list[bytes], *, tag_free: bool) -> Batch:
    return Batch(
        did=m[1],
        seq=m[2],
        prev=m[3],
        sealed=m[4],
        records=m[5],
        record_bytes=record_bytes,
        root=m[6],
        clock=m[7],
        modules=m[8],
        dropped=m.get(9) or [],
        boot=m[10],
        tag_free=tag_free,
    )


def _reference(payload: bytes, m: dict[Any, Any]) -> Batch:
    records = m[5]
    for i, rec in enumerate(records):
        check_record(rec, i)
    try:
        canonical = dcbor.dumps(m)
    except ValueError as e:  # NaN or an infinity outside the records (clock, modules, dropped)
        raise PayloadError("nan", str(e)) from None
    if canonical != payload:
        raise PayloadError("non-deterministic", "payload is not in deterministic encoding")
    # The payload re-encodes to itself, so each record re-encodes to its transported bytes.
    record_bytes = [dcbor.dumps(r) for r in records]
    if merkle.root(record_bytes) != m[6]:
        raise PayloadError("bad-root", "Merkle root does not match the records")
    return _batch(m, record_bytes, tag_free=False)


# --- the fast path ----------------------------------------------------------------------------
#
# The reference spends its time in pure Python: `dcbor.normalise` walks every value, then cbor2
# sorts the keys of every map it re-encodes, and every record is encoded a second time for its
# leaf. The fast path accepts a batch only when it can show the reference would return the very
# same Batch, doing the per-record work with C-level iteration (map, zip, set, compress):
#
# 1. Every record is a map whose labels, in the order they were decoded (the payload's order),
#    are one of the canonical layouts of `_RECORD_LAYOUTS`, each label an int or a text, and
#    whose values have the types check_record wants (name and unit non-empty text, time,
#    value and score numbers, score within [0, 1], flags a non-empty array of text): so
#    check_record would pass every record.
# 2. No float in a record is NaN, infinite or integral, so `dcbor.normalise` would leave the
#    records unchanged and the reference's re-encoding is plain canonical cbor2.
# 3. Each record is re-encoded as the flat array [label, value, label, value, ...]: canonical
#    cbor2 encodes items exactly as it does inside a map, and a map whose labels are already in
#    canonical order (step 1) is its head followed by those items; only the one-byte head
#    differs (0x80 | 2n for the array, 0xA0 | n for the map, n <= 6 here). Arrays are not
#    sorted, so this costs a fraction of encoding the map.
# 4. The other batch fields go through `dcbor.dumps` as in the reference (they are small).
#    Their keys are the integers 1..10 (checked), so ascending order is canonical order and the
#    whole canonical payload is the map head followed by key byte and encoding per key. It must
#    equal the payload, byte for byte: that settles shortest heads, definite lengths, key order,
#    duplicate keys, shortest floats and trailing bytes, exactly as the reference's comparison.
# 5. The Merkle root over those record bytes matches.
#
# Whenever a condition fails the reference runs instead, from the already decoded map, and
# produces the finding (or accepts an unusual but valid batch, e.g. one with a float >= 2**64).
# The costs, for 1,000 records on this project's 2-core machine: about 5 ms instead of 13.


def _record_layouts() -> frozenset[tuple[Any, ...]]:
    """The labels of every record the fast path takes, in canonical order: name, unit and time
    always; a value, flags or both; a score or not. Integer labels (one-byte heads,
    ascending) sort before "af", which sorts before "as"."""
    out = set()
    for value, flags, score in itertools.product((True, False), repeat=3):
        if value or flags:  # a reading without a value needs a flag (spec section 4)
            labels = [N, U, *([V] if value else []), T]
            out.add((*labels, *([FLAGS] if flags else []), *([SCORE] if score else [])))
    return frozenset(out)


_RECORD_LAYOUTS = _record_layouts()
_MAP_HEADS = [bytes([0xA0 | n]) for n in range(7)]  # records have at most 6 labels
_INT_RANGE = (-(2**64), 2**64 - 1)  # CBOR major types 0 and 1; beyond them cbor2 uses tags
_flat = itertools.chain.from_iterable
_get_name, _get_unit, _get_time = map(operator.itemgetter, (N, U, T))
# Absent value or score: 0, a number, so only a present non-number fails the type check.
_get_value, _get_score = (operator.methodcaller("get", k, 0) for k in (V, SCORE))
_get_flags = operator.itemgetter(FLAGS)
_drop_head = operator.itemgetter(slice(1, None))


def _is_type(t: type, values: list[Any]) -> Iterator[bool]:
    return map(operator.is_, map(type, values), itertools.repeat(t))


def _fast(payload: bytes, m: dict[Any, Any]) -> Batch | None:
    """The Batch `_reference` would return, or None when this path cannot vouch for it."""
    records: list[Any] = m[5]
    if not set(map(type, records)) <= {dict}:
        return None
    # Labels: a canonical layout, and each label an int or a text (true and 1.0 equal 1 in
    # Python; their types keep them out).
    if not (
        set(map(tuple, records)) <= _RECORD_LAYOUTS and set(map(type, _flat(records))) <= {int, str}
    ):
        return None
    names, units = list(map(_get_name, records)), list(map(_get_unit, records))
    if not (set(map(type, names + units)) <= {str} and all(names) and all(units)):
        return None
    numbers = [*map(_get_time, records), *map(_get_value, records), *map(_get_score, records)]
    if not set(map(type, numbers)) <= {int, float}:
        return None
    floats = list(itertools.compress(numbers, _is_type(float, numbers)))
    if any(map(float.is_integer, floats)) or not all(map(math.isfinite, floats)):
        return None  # NaN/infinity (a finding) or an integral float (normalise would change it)
    scores = numbers[2 * len(records) :]
    if scores and (min(scores) < 0 or max(scores) > 1):
        return None
    has_flags = map(dict.__contains__, records, itertools.repeat(FLAGS))
    flag_lists = list(map(_get_flags, itertools.compress(records, has_flags)))
    if not (
        set(map(type, flag_lists)) <= {list}
        and all(flag_lists)
        and set(map(type, _flat(flag_lists))) <= {str}
    ):
        return None
    # One encoder per call: an encoder must not be shared between threads.
    encode = cbor2.CBOREncoder(io.BytesIO(), canonical=True).encode_to_bytes
    items = map(list, map(_flat, map(dict.items, records)))
    heads = map(_MAP_HEADS.__getitem__, map(len, records))
    record_bytes = list(map(operator.add, heads, map(_drop_head, map(encode, items))))
    keys = sorted(m)
    try:
        parts = [
            _head(4, len(records)) + b"".join(record_bytes) if k == 5 else dcbor.dumps(m[k])
            for k in keys
        ]
    except ValueError:
        return None  # NaN or an infinity in clock, modules or dropped: the reference says so
    canonical = _head(5, len(m)) + b"".join(
        _flat(zip(map(_KEY_BYTES.__getitem__, keys), parts, strict=True))
    )
    if canonical != payload:
        return None
    if merkle.root(record_bytes) != m[6]:
        return None
    # Tag-free needs every integer within CBOR's 64-bit range (beyond it cbor2 writes a bignum,
    # tag 2 or 3); bounding all numbers, floats included, is simpler and only ever too strict.
    tag_free = (
        not numbers or (_INT_RANGE[0] <= min(numbers) and max(numbers) <= _INT_RANGE[1])
    ) and all(_plain(m[k]) for k in keys if k != 5)
    return _batch(m, record_bytes, tag_free=tag_free)


_KEY_BYTES = {k: bytes([k]) for k in BATCH_KEYS}


def _plain(obj: Any) -> bool:
    """True when `obj` is built only of types canonical cbor2 encodes without a tag. Applied to
    decoded values whose re-encoding equals the payload, it proves the payload has no tag."""
    t = type(obj)
    if t is int:
        return bool(_INT_RANGE[0] <= obj <= _INT_RANGE[1])
    if t in (str, bytes, float, bool) or obj is None:
        return True
    if t is list:
        return all(map(_plain, obj))
    if t is dict:
        return all(map(_plain, obj)) and all(map(_plain, obj.values()))
    return False
