"""Proofs for one reading (docs/proofs.md): a JSON document anyone can check without the rest of
the device's data.

A proof carries the record's bytes, its Merkle inclusion path (RFC 9162 section 2.1.3) and the
batch root, and - unless compact - the signed batch message itself, so a checker can see that
the device signed the batch whose root the path leads to. A compact proof shows only that the
record is a leaf of a tree with that root: its did, seq and batch id are claims, and the root
and size must be trusted from elsewhere.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from gateway.core.errors import ProofError
from gateway.wire import limits, merkle, payloads, strict, verify
from gateway.wire.identity import public_key_of_did

FORMAT = "depin-proof-v1"
COMPACT_NOTE = (
    "compact proof: it shows only that the record is in a Merkle tree with this root; the root "
    "and size must be trusted from elsewhere (e.g. the signed batch with this batch id)"
)
_REQUIRED = frozenset(
    {"format", "did", "seq", "batch_id", "index", "size", "record", "reading", "path", "root"}
)
_OPTIONAL = frozenset({"batch", "note"})
_READING_KEYS = frozenset({"name", "unit", "value", "time", "score", "flags"})
_HEX = re.compile(r"(?:[0-9a-f]{2})*")
_MAX_PATH = 64  # a batch holds fewer than 2**64 records
#: A full proof holds its batch in base64 (4/3 of the largest message a file may hold) and the
#: JSON around it; anything longer is refused before it is parsed.
MAX_PROOF = 2 * limits.DEFAULT_CAP


# --- making proofs ----------------------------------------------------------------------------


@lru_cache(maxsize=4)
def _examine(message: bytes) -> verify.Finding | verify.Examined:
    # Cached on the exact bytes: proving or checking every reading of one batch would otherwise
    # re-verify the same signature and re-decode the same payload once per reading.
    return verify.examine(message)


def _checked_batch(message: bytes) -> verify.Examined:
    x = _examine(bytes(message))
    if isinstance(x, verify.Finding):
        raise ProofError(f"not a valid signed batch: {_why(x)}")
    return x


def _why(x: verify.Finding) -> str:
    if not x.forged:  # a valid birth or attestation: signed, but not a batch
        return f"malformed: a signed {x.kind} message, not a batch"
    return f"{x.kind}: {x.detail}"


def reading_of(rec: dict[Any, Any]) -> dict[str, Any]:
    """The human-readable fields of a checked SenML record (spec section 4)."""
    return {
        "name": rec[payloads.N],
        "unit": rec[payloads.U],
        "value": rec.get(payloads.V),  # None: a failed reading, see its flags
        "time": rec[payloads.T],
        "score": rec.get(payloads.SCORE),
        "flags": list(rec.get(payloads.FLAGS, [])),
    }


def make_proof(batch_message: bytes, index: int, *, compact: bool = False) -> dict[str, Any]:
    """The proof of record `index` of a signed batch message. Refuses (ProofError) a batch that
    does not verify: a proof of a forged batch would only fail later, at the relying party."""
    x = _checked_batch(batch_message)
    b = x.batch
    if not 0 <= index < len(b.records):
        raise ProofError(f"no record {index}: the batch has {len(b.records)}", exit_code=2)
    doc: dict[str, Any] = {
        "format": FORMAT,
        "did": x.did,
        "seq": b.seq,
        "batch_id": x.batch_id.hex(),
        "reading": reading_of(b.records[index]),
        "index": index,
        "size": len(b.records),
        "record": b.record_bytes[index].hex(),
        "path": [h.hex() for h in merkle.inclusion_proof(index, b.record_bytes)],
        "root": b.root.hex(),
    }
    if compact:
        doc["note"] = COMPACT_NOTE
    else:
        doc["batch"] = base64.b64encode(bytes(batch_message)).decode("ascii")
    return doc


def find_record(batch_message: bytes, name: str, t: float) -> int:
    """The index of the one record named `name` read at time `t`; ProofError (listing the
    nearest candidates) when there is none, or when several match."""
    x = _checked_batch(batch_message)
    recs = x.batch.records
    where = f"batch seq {x.batch.seq} (id {x.batch_id.hex()[:16]})"
    same = [i for i, r in enumerate(recs) if r[payloads.N] == name]
    hits = [i for i in same if _t(recs[i]) == t]
    if len(hits) == 1:
        return hits[0]
    if hits:
        raise ProofError(
            f"{len(hits)} records {name} at {t} in {where}: indexes {hits}; choose with --index",
            exit_code=2,
        )
    if not same:
        names = sorted({r[payloads.N] for r in recs})
        raise ProofError(f"no reading {name} in {where}; it has {', '.join(names)}", exit_code=2)
    near = sorted(same, key=lambda i: abs(_t(recs[i]) - t))[:5]
    listed = ", ".join(f"index {i} at {recs[i][payloads.T]}" for i in sorted(near))
    raise ProofError(f"no reading {name} at {t} in {where}; nearest: {listed}", exit_code=2)


def _t(rec: dict[Any, Any]) -> float:
    return float(rec[payloads.T])


# --- checking proofs --------------------------------------------------------------------------


@dataclass(frozen=True)
class ProofResult:
    """What check_proof concluded. `passed` names the checks that passed, in order; `failure`
    and `reason` describe the first one that did not (None and "" when the proof is valid)."""

    ok: bool
    passed: tuple[str, ...]
    failure: str | None = None
    reason: str = ""
    signed: bool = False  # the batch message was included and its signature verified
    proof: dict[str, Any] = field(default_factory=dict)  # the proof as given (when a map)


#: A proof is one object holding `reading` (an object holding `flags`) and `path`: four
#: containers, three deep. Values (every element and member, counted by their separators) are
#: its 12 fields, 6 in `reading`, at most 64 in `path` and the record's flags; 4096 leaves
#: thousands for flags and still keeps what json builds to a few hundred KiB, where 8 MiB of
#: `{},` or `1.5,` would build hundreds of MiB of Python objects.
MAX_CONTAINERS = 4
MAX_DEPTH = 3
MAX_VALUES = 4096
# A JSON string (skipped whole, so brackets and commas inside text do not count), or one of
# the characters that open a container or separate values. Unrolled: linear even unterminated.
_STRUCTURE = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[{,\]}]')


def shape_refusal(text: str) -> str | None:
    """Why `text` cannot be a proof from its structure alone (too many objects or arrays, too
    deep, too many values), naming the offset where the bound was passed; None when it may be.
    Judged on the raw text before json builds anything: its cost is the text, not the objects
    it describes."""
    containers = depth = values = 0
    for m in _STRUCTURE.finditer(text):
        c = m.group()
        if c in "[{":
            containers += 1
            depth += 1
            if containers > MAX_CONTAINERS:
                return (
                    f"more than {MAX_CONTAINERS} objects and arrays (a proof has {MAX_CONTAINERS}: "
                    f"itself, reading, reading.flags, path); the next opens at character "
                    f"{m.start()}"
                )
            if depth > MAX_DEPTH:
                return (
                    f"objects or arrays nested more than {MAX_DEPTH} deep (a proof's deepest is "
                    f"reading.flags) at character {m.start()}"
                )
        elif c in "]}":
            depth = max(0, depth - 1)
        elif c == ",":
            values += 1
            if values >= MAX_VALUES:
                return (
                    f"more than {MAX_VALUES} values (a proof has its fields, a reading, at most "
                    f"{_MAX_PATH} path hashes and the record's flags); the next at character "
                    f"{m.start()}"
                )
    return None


class _Failed(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def parse_proof(data: bytes | str) -> Any:
    """The JSON document of a proof; ValueError (with JSON's line and column) when the text is
    not JSON, or holds more objects, arrays or values than any proof (`shape_refusal`).
    Whether the document is a proof at all is check_proof's question."""
    if len(data) > MAX_PROOF:
        raise ValueError(f"{len(data)} bytes, over the {MAX_PROOF} byte cap of a proof")
    if isinstance(data, bytes):
        data = data.decode("utf-8")
    refused = shape_refusal(data)
    if refused is not None:
        raise ValueError(refused)

    def no_constants(name: str) -> Any:  # JSON has no NaN or Infinity; Python accepts them
        raise ValueError(f"{name} is not JSON")

    return json.loads(data, parse_constant=no_constants)


def check_proof(proof: Any) -> ProofResult:
    """Check a proof (a parsed JSON map, or its text). Never raises: anything that is not a
    valid proof is a failed check with a reason."""
    passed: list[str] = []
    doc = proof
    try:
        if isinstance(proof, bytes | str):
            try:
                doc = parse_proof(proof)
            except (ValueError, RecursionError) as e:
                raise _Failed("malformed", f"not a JSON proof: {e}") from None
        signed = _check(doc, passed.append)
    except _Failed as f:
        return ProofResult(False, tuple(passed), f.kind, f.reason, False, _as_map(doc))
    except Exception as e:  # a decoder surprise or a bug must still be an answer, not a crash
        reason = f"unexpected {type(e).__name__}: {e}"
        return ProofResult(False, tuple(passed), "malformed", reason, False, _as_map(doc))
    return ProofResult(True, tuple(passed), None, "", signed, doc)


def _as_map(doc: Any) -> dict[str, Any]:
    return doc if isinstance(doc, dict) else {}


def _check(p: Any, passed: Callable[[str], None]) -> bool:
    """The checks in order; raises _Failed at the first failure, returns whether signed."""
    f = _fields(p)
    passed("format")
    rec = _record(f["record"], p["index"])
    passed("record")
    shown, recorded = p["reading"], reading_of(rec)
    for k in ("name", "unit", "value", "time", "score", "flags"):
        if not _same(shown[k], recorded[k]):
            raise _Failed(
                "reading-mismatch",
                f"the reading's {k} {shown[k]!r} is not the record's {recorded[k]!r}",
            )
    passed("reading")
    if not merkle.verify_inclusion(f["record"], p["index"], p["size"], f["path"], f["root"]):
        raise _Failed(
            "not-included",
            f"the path does not lead from the record at index {p['index']} of "
            f"{p['size']} to root {p['root'][:16]}",
        )
    passed("inclusion")
    if "batch" not in p:
        return False
    x = _examine(f["batch"])
    if isinstance(x, verify.Finding):
        kind, _, detail = _why(x).partition(": ")
        raise _Failed(kind, f"the included batch is not a valid signed batch: {detail}")
    passed("signature")
    b = x.batch
    claims = (
        ("did", p["did"], x.did),
        ("seq", p["seq"], b.seq),
        ("batch_id", p["batch_id"], x.batch_id.hex()),
        ("root", p["root"], b.root.hex()),
        ("size", p["size"], len(b.records)),
    )
    for name, claimed, actual in claims:
        if claimed != actual:
            raise _Failed(
                "batch-mismatch", f"the proof's {name} {claimed!r} is not the batch's {actual!r}"
            )
    passed("batch")
    if b.record_bytes[p["index"]] != f["record"]:
        raise _Failed("record-mismatch", f"record {p['index']} of the batch is another record")
    passed("record-in-batch")
    return True


def _fields(p: Any) -> dict[str, Any]:
    """Shape checks; returns the decoded binary fields (record, path, root, batch)."""
    if not isinstance(p, dict):
        raise _Failed("malformed", "a proof is a JSON object")
    if p.get("format") != FORMAT:
        raise _Failed("malformed", f"format is {p.get('format')!r}, not {FORMAT!r}")
    missing, unknown = _REQUIRED - set(p), set(p) - _REQUIRED - _OPTIONAL
    if missing or unknown:
        what = f"missing {sorted(missing)}" if missing else f"unknown fields {sorted(unknown)}"
        raise _Failed("malformed", what)
    for k in ("seq", "index", "size"):
        if type(p[k]) is not int or p[k] < 0:
            raise _Failed("malformed", f"{k} is not an unsigned integer")
    if not p["index"] < p["size"]:
        raise _Failed("malformed", f"index {p['index']} is outside a tree of {p['size']}")
    if not isinstance(p.get("note", ""), str):
        raise _Failed("malformed", "note is text")
    try:
        public_key_of_did(p["did"])  # also keeps control characters out of the summary
    except (TypeError, ValueError, AttributeError):
        raise _Failed("malformed", "did is not an Ed25519 did:key") from None
    reading = p["reading"]
    if not isinstance(reading, dict) or set(reading) != _READING_KEYS:
        raise _Failed("malformed", f"reading must have exactly {sorted(_READING_KEYS)}")
    path = p["path"]
    if not isinstance(path, list) or len(path) > _MAX_PATH:
        raise _Failed("malformed", f"path is not a list of at most {_MAX_PATH} hashes")
    out = {
        "record": _hex(p["record"], "record"),
        "root": _hex(p["root"], "root", 32),
        "path": [_hex(h, f"path[{i}]", 32) for i, h in enumerate(path)],
    }
    _hex(p["batch_id"], "batch_id", 32)
    if "batch" in p:
        b = p["batch"]
        try:
            if not isinstance(b, str) or len(b) > MAX_PROOF:
                raise ValueError("not text of a sane length")
            out["batch"] = base64.b64decode(b, validate=True)
        except (ValueError, binascii.Error) as e:
            raise _Failed("malformed", f"batch is not base64: {e}") from None
    return out


def _hex(s: Any, what: str, size: int | None = None) -> bytes:
    if not isinstance(s, str) or not _HEX.fullmatch(s):
        raise _Failed("malformed", f"{what} is not lowercase hex")
    b = bytes.fromhex(s)
    if size is not None and len(b) != size:
        raise _Failed("malformed", f"{what} is {len(b)} bytes, not {size}")
    return b


def _record(data: bytes, index: int) -> dict[Any, Any]:
    """Exactly one deterministic CBOR map that is a well-formed record (spec sections 4, 7),
    judged from its bytes before it is decoded (gateway/wire/strict.py)."""
    try:
        rec = strict.loads(data, deterministic=True)
        payloads.check_record(rec, index)
    except (strict.DecodeError, payloads.PayloadError) as e:
        raise _Failed("bad-record", f"the record is not a valid SenML record: {e}") from None
    assert isinstance(rec, dict)  # check_record passed
    return rec


def _same(shown: Any, actual: Any) -> bool:
    """Equal as a reader of the JSON would take them: numbers by value, never a bool for one."""
    if isinstance(shown, bool) or isinstance(actual, bool):
        return type(shown) is type(actual) and shown == actual
    return bool(shown == actual)


# --- for people -------------------------------------------------------------------------------


def _printable(x: Any) -> str:
    """Text from a proof, escaped where it could forge lines of the summary (a newline in a
    reading's name followed by "signed by the device: yes", terminal control sequences)."""
    if isinstance(x, list):
        return " ".join(_printable(v) for v in x)
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(x))


def _when(t: Any) -> str:
    from datetime import UTC, datetime

    try:
        iso = datetime.fromtimestamp(float(t), UTC).isoformat().replace("+00:00", "Z")
    except (TypeError, ValueError, OverflowError, OSError):
        return f"{t}"
    return f"{iso} ({t})"


def describe(result: ProofResult, source: str) -> list[str]:
    """The lines `depin-gateway verify-proof` prints: the verdict, then what a valid proof
    shows - with the device's claims marked as claims when the proof is compact."""
    if not result.ok:
        return [f"{source}: INVALID {result.failure}: {_printable(result.reason)}"]
    p, raw = result.proof, result.proof["reading"]
    r = {k: _printable(v) for k, v in raw.items()}
    value = "no value (failed reading)" if raw["value"] is None else f"{r['value']} {r['unit']}"
    score = "" if raw["score"] is None else f", score {r['score']}"
    flags = f", flags {r['flags']}" if raw["flags"] else ", no flags"
    claimed = "" if result.signed else " (claimed, not proven by a compact proof)"
    lines = [
        f"{source}: valid",
        f"  device:  {p['did']}{claimed}",
        f"  batch:   seq {p['seq']}, id {p['batch_id'][:16]}{claimed}",
        f"  reading: {r['name']} = {value} at {_when(raw['time'])}{score}{flags}",
        f"  record:  {p['index']} of {p['size']}, Merkle root {p['root'][:16]}",
    ]
    if result.signed:
        lines.append("  signed by the device: yes")
    else:
        lines.append("  signed by the device: no (compact proof)")
        lines.append(f"  note: {COMPACT_NOTE}")
    return lines
