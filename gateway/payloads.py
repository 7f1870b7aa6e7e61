"""The signed payloads of spec sections 3-5: SenML records, batches and birth messages.

Records are encoded once, when a reading is spooled, and embedded verbatim in the batch: the
Merkle leaf of a reading is those exact bytes, so a record never changes after it is stored.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cbor2

from gateway import dcbor, merkle

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


def decode_batch(payload: bytes) -> Batch:
    """Decode and check a batch payload (spec sections 3, 4, 7 and 9 step 4)."""
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
    if merkle.root(record_bytes) != root:
        raise PayloadError("bad-root", "Merkle root does not match the records")
    return Batch(
        did=did,
        seq=seq,
        prev=prev,
        sealed=sealed,
        records=records,
        record_bytes=record_bytes,
        root=root,
        clock=clock,
        modules=modules,
        dropped=dropped or [],
        boot=boot,
    )
