"""The signed payloads of spec sections 3-5: SenML records, batches and birth messages.

Records are encoded once, when a reading is spooled, and embedded verbatim in the batch: the
Merkle leaf of a reading is those exact bytes, so a record never changes after it is stored.
"""

from __future__ import annotations

import bisect
import itertools
import math
import operator
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from gateway.wire import dcbor, merkle, strict
from gateway.wire.identity import public_key_of_did

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
    #: Always True since payloads are scanned before decoding (gateway/wire/strict.py): a
    #: decoded payload holds no CBOR tag. Kept for callers that ask.
    tag_free: bool = field(default=True, compare=False)


@dataclass(frozen=True)
class Scanned:
    """A payload that passed the strict scan in deterministic mode (spec section 7), decoded:
    `marks[d]` holds the (start, end) offsets of the arrays and maps of nesting depth d, so
    parts of the payload (a batch's records) are sliced out, never read or encoded again."""

    payload: bytes
    value: Any
    marks: list[list[tuple[int, int]]]


def scan_payload(payload: bytes) -> Scanned:
    """The payload decoded once its bytes passed every rule of spec section 7 (no tags,
    definite lengths, shortest forms, sorted unique keys, no NaN); PayloadError otherwise,
    with the kind a verifier reports ("malformed", "non-deterministic", "nan")."""
    marks: list[list[tuple[int, int]]] = [[], [], []]
    try:
        value = strict.loads(payload, deterministic=True, marks=marks)
    except strict.DecodeError as e:
        raise PayloadError(e.kind, f"payload {e.detail}") from None
    return Scanned(payload, value, marks)


def decode_batch(payload: bytes, *, decoded: Scanned | None = None) -> Batch:
    """Decode and check a batch payload (spec sections 3, 4, 7 and 9 step 4).

    Same answers as `decode_batch_reference`, faster: the records of an ordinary batch are
    checked in bulk (`_records_fast`); when that cannot vouch for them, every record goes
    through `check_record`, so findings and their details never depend on which path ran. A
    caller that already scanned the payload (`scan_payload`) passes the result as `decoded`."""
    sc = decoded if decoded is not None and decoded.payload is payload else scan_payload(payload)
    m = _batch_map(sc.value)
    if not _records_fast(m[5]):
        _check_records(m[5])
    return _checked(sc, m)


def decode_batch_reference(payload: bytes) -> Batch:
    """The plain reading of the spec, kept as the definition `decode_batch` is tested against:
    the same scan, then `check_record` on every record."""
    sc = scan_payload(payload)
    m = _batch_map(sc.value)
    _check_records(m[5])
    return _checked(sc, m)


def _check_records(records: list[Any]) -> None:
    for i, rec in enumerate(records):
        check_record(rec, i)


def _checked(sc: Scanned, m: dict[Any, Any]) -> Batch:
    """The Batch, once its Merkle root matches the records' transported bytes."""
    record_bytes = _record_slices(sc, m)
    if merkle.root(record_bytes) != m[6]:
        raise PayloadError("bad-root", "Merkle root does not match the records")
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
    )


def _record_slices(sc: Scanned, m: dict[Any, Any]) -> list[bytes]:
    """Each record's bytes exactly as transported (its Merkle leaf), cut out of the payload at
    the offsets the scan marked. Keys 1-4 hold no array or map (checked), so the records are
    the first array at depth 1, and the records themselves (maps, checked) are the depth-2
    containers inside it."""
    payload = sc.payload
    r0, r1 = sc.marks[1][0]
    inner = sc.marks[2]
    lo = bisect.bisect_right(inner, (r0, r1))
    hi = bisect.bisect_left(inner, (r1, 0))
    return [payload[a:b] for a, b in inner[lo:hi]]


def _batch_map(m: Any) -> dict[Any, Any]:
    """Check the decoded batch fields' presence and types (not the records)."""
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


# --- the fast path ----------------------------------------------------------------------------
#
# The scan already settled spec section 7 on the bytes (key order, shortest floats, no NaN, no
# integral float), so what check_record still asks of a record is its labels and the types of
# its values. `_records_fast` answers that for a whole batch with C-level iteration (map, set,
# compress); when any condition fails it answers "cannot vouch" and check_record runs on every
# record, so the finding and its detail are the reference's.


_flat = itertools.chain.from_iterable
_get_name, _get_unit, _get_time = map(operator.itemgetter, (N, U, T))
# Absent value or score: 0, a number, so only a present non-number fails the type check.
_get_value, _get_score = (operator.methodcaller("get", k, 0) for k in (V, SCORE))
_get_flags = operator.itemgetter(FLAGS)


def _records_fast(records: list[Any]) -> bool:
    """True when check_record would pass every record; False when that is not shown."""
    if not set(map(type, records)) <= {dict}:
        return False
    # Labels: name, unit, time, a value or flags, score optional; each an int or a text (true
    # and 1.0 equal 1 in Python: their types keep them out).
    if not set(map(type, _flat(records))) <= {int, str}:
        return False
    if not set(map(frozenset, records)) <= _LAYOUTS:
        return False
    names, units = list(map(_get_name, records)), list(map(_get_unit, records))
    if not (set(map(type, names + units)) <= {str} and all(names) and all(units)):
        return False
    numbers = [*map(_get_time, records), *map(_get_value, records), *map(_get_score, records)]
    if not set(map(type, numbers)) <= {int, float}:
        return False
    scores = numbers[2 * len(records) :]
    if scores and (min(scores) < 0 or max(scores) > 1):
        return False
    has_flags = map(dict.__contains__, records, itertools.repeat(FLAGS))
    flag_lists = list(map(_get_flags, itertools.compress(records, has_flags)))
    return (
        set(map(type, flag_lists)) <= {list}
        and all(flag_lists)
        and set(map(type, _flat(flag_lists))) <= {str}
    )


def _layouts() -> frozenset[frozenset[Any]]:
    """The label sets of every record the fast path takes: name, unit and time always; a value,
    flags or both (a reading without a value needs a flag, spec section 4); a score or not."""
    out = set()
    for value, flags, score in itertools.product((True, False), repeat=3):
        if value or flags:
            labels: list[int | str] = [N, U, T, *([V] if value else [])]
            labels += [*([FLAGS] if flags else []), *([SCORE] if score else [])]
            out.add(frozenset(labels))
    return frozenset(out)


_LAYOUTS = _layouts()


# --- births and attestations (spec sections 5 and 6, rules of v1.1) ----------------------------

#: Bounds of spec v1.1 on birth and attestation fields: generous for any honest gateway, small
#: enough that nothing a stranger signs can make a reader hold or show much.
MAX_TEXT = 64  # version, sensor id, driver, quantity, module name and version
MAX_SENSORS = 64
MAX_QUANTITIES = 32
MAX_MODULES = 64
#: Unix times a birth may claim: 1970 up to 2^32 s (year 2106). Epochs are in the same range.
MAX_TIME = 2**32
MIN_INTERVAL = 0.001  # seconds; below it a sensor list only makes the expected counts absurd
MAX_INTERVAL = 2**32
ATTESTATION_KEYS = frozenset(range(1, 12))
ATTESTATION_REQUIRED = ATTESTATION_KEYS - {11}
STATUSES = frozenset({"ok", "gap", "equivocation", "replay"})
_UINT_LIMIT = 2**64


def _uint(x: Any) -> bool:
    return type(x) is int and 0 <= x < _UINT_LIMIT


def _text(x: Any, limit: int = MAX_TEXT) -> bool:
    return type(x) is str and 0 < len(x) <= limit


def _did(x: Any) -> bool:
    if type(x) is not str or len(x) > 100:
        return False
    try:
        public_key_of_did(x)
    except (ValueError, TypeError):
        return False
    return True


def _finite(x: Any) -> bool:
    return type(x) in (int, float) and math.isfinite(x)


def _list(x: Any, most: int, ok: Callable[[Any], bool]) -> bool:
    return type(x) is list and len(x) <= most and all(ok(e) for e in x)


def _module(e: Any) -> bool:
    return (
        type(e) is list
        and len(e) == 3
        and type(e[0]) is str
        and type(e[1]) is str
        and len(e[0]) <= MAX_TEXT
        and len(e[1]) <= MAX_TEXT
        and type(e[2]) is bytes
        and len(e[2]) == 32
    )


def modules_ok(modules: Any) -> bool:
    """Batch key 8 and birth key 7: [[name, version, sha256 bytes(32)], ...]."""
    return _list(modules, MAX_MODULES, _module)


_SENSOR_KEYS = frozenset({"id", "driver", "quantities", "interval"})


def _sensor(s: Any) -> bool:
    return (
        type(s) is dict
        and set(s) == _SENSOR_KEYS
        and _text(s["id"])
        and _text(s["driver"])
        and _list(s["quantities"], MAX_QUANTITIES, _text)
        and _finite(s["interval"])
        and MIN_INTERVAL <= s["interval"] <= MAX_INTERVAL
    )


def sensors_ok(sensors: Any) -> bool:
    """Birth key 6: [{"id": text, "driver": text, "quantities": [text, ...], "interval": s}]."""
    return _list(sensors, MAX_SENSORS, _sensor)


def check_birth(m: Any) -> None:
    """Spec section 5 with the v1.1 rules: PayloadError("malformed") naming the field."""
    if type(m) is not dict or any(type(k) is not int for k in m) or set(m) != BIRTH_KEYS:
        raise PayloadError("malformed", f"a birth has exactly the keys {sorted(BIRTH_KEYS)}")
    if not _text(m[1], 100):
        raise PayloadError("malformed", "birth key 1 (did) is not text")
    if not _text(m[2]):
        raise PayloadError("malformed", f"birth key 2 (version) is not text of 1-{MAX_TEXT}")
    if type(m[3]) is not bytes or len(m[3]) != 16:
        raise PayloadError("malformed", "birth key 3 (boot id) is not 16 bytes")
    if not (_finite(m[4]) and 0 <= m[4] < MAX_TIME):
        raise PayloadError("malformed", "birth key 4 (started) is not a time in [0, 2^32)")
    if type(m[5]) is not bytes or len(m[5]) != 32:
        raise PayloadError("malformed", "birth key 5 (configuration sha256) is not 32 bytes")
    if not sensors_ok(m[6]):
        raise PayloadError("malformed", "bad sensor list")
    if not modules_ok(m[7]):
        raise PayloadError("malformed", "birth key 7 (modules) is not [name, version, sha256]s")
    if not _uint(m[8]):
        raise PayloadError("malformed", "birth key 8 (next seq) is not an unsigned integer")


def check_attestation(m: Any) -> None:
    """Spec section 6 with the v1.1 rules (key 11 the revision): PayloadError("malformed")."""
    if type(m) is not dict or any(type(k) is not int for k in m):
        raise PayloadError("malformed", "an attestation's keys are integers")
    unknown, missing = set(m) - ATTESTATION_KEYS, ATTESTATION_REQUIRED - set(m)
    if unknown or missing:
        what = f"unknown keys {sorted(unknown)}" if unknown else f"missing keys {sorted(missing)}"
        raise PayloadError("malformed", f"attestation: {what}")
    if not _text(m[1], 100):
        raise PayloadError("malformed", "attestation key 1 (attestor did) is not text")
    if not _did(m[2]):
        raise PayloadError("malformed", "attestation key 2 (device) is not an Ed25519 did:key")
    if not (_uint(m[3]) and _uint(m[4]) and m[3] < m[4]):
        raise PayloadError("malformed", "attestation epoch (keys 3, 4) is not start < end")
    if not (_uint(m[5]) and _uint(m[6]) and _uint(m[7])):
        raise PayloadError("malformed", "attestation counts (keys 5-7) are not unsigned integers")
    if type(m[8]) is not str or m[8] not in STATUSES:
        raise PayloadError(
            "malformed", f"attestation status {str(m[8])[:20]!r} is not one of {sorted(STATUSES)}"
        )
    if not (_finite(m[9]) and 0 <= m[9] <= 1):
        raise PayloadError("malformed", "attestation score (key 9) is not a number in [0, 1]")
    if type(m[10]) is not bytes or len(m[10]) != 32:
        raise PayloadError("malformed", "attestation root (key 10) is not 32 bytes")
    if 11 in m and not (_uint(m[11]) and m[11] >= 1):
        raise PayloadError("malformed", "attestation revision (key 11) is not an integer >= 1")
