"""The chain's high-water mark, kept beside the spool, so that no seq is ever signed twice.

The spool is where the chain lives, but a spool can go back in time (a WAL the card rolled back
or someone deleted, a backup put back) or be replaced (moved aside, deleted). A gateway taking
up its chain from such a spool would sign new batches under seqs it had already published: an
equivocation for each of them. So after every commit that sealed a batch, and before any batch
of that commit reaches the uplink, the spool records here the last seq, its batch id and the
batches that may not have reached the broker yet; at the next start a spool behind this record
continues the chain after it and states in a signed loss receipt what was lost (`plan`).

The file has two fixed-size slots written in turn, in place: one pwrite and one fdatasync per
record, no new file and no directory update on the hot path. Each slot holds one JSON record on
its first line (what follows it is ignored), with a generation number and a checksum; a write
torn by a power cut spoils only its own slot, and the reader takes the valid slot with the
higher generation, which is then the one before.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.core.errors import SpoolError
from gateway.core.files import write_atomic
from gateway.wire.loss import LOSS_REPLACED, LOSS_ROLLED_BACK, loss_why
from gateway.wire.payloads import DropReceipt

log = logging.getLogger("gateway.spool")

FORMAT = 1
# Bytes per slot: both slots in one page, so a record costs the card one page (~35 batches
# not yet acknowledged fit; a bigger record doubles the slots). A torn write of that page
# leaves the other slot's bytes as they were: they are written unchanged.
SLOT = 2048


def beside(spool: Path, suffix: str) -> Path:
    """`spool.db` -> `spool.chain`: a name that `spool.db*` does not match, so moving a spool
    aside with a glob (its -wal and -shm too) leaves the chain record and the lock in place."""
    if spool.suffix == suffix:
        return spool.with_name(spool.name + suffix)
    return spool.with_suffix(suffix)


@dataclass(frozen=True, slots=True)
class Entry:
    """A sealed batch not known to be acknowledged: after a loss, its fate is unknown."""

    seq: int
    n: int  # readings
    first_t: float  # time of its first reading
    sealed: float


@dataclass(frozen=True, slots=True)
class Stated:
    """A loss receipt not known to have reached the broker yet, and the seq of the batch that
    carries it (None until one is sealed)."""

    receipt: DropReceipt
    carrier: int | None


@dataclass(frozen=True)
class Record:
    did: str
    spool: str  # the id of the spool file (its meta `spool_id`)
    seq: int  # the last sealed seq
    batch: bytes  # its batch id
    sealed: float | None  # when it was sealed
    taken: int  # readings that left the spool's queue so far (sealed or dropped), chain-wide
    unacked: tuple[Entry, ...] = ()
    stated: tuple[Stated, ...] = ()


@dataclass(frozen=True)
class Plan:
    """How a spool behind the record takes up the chain again."""

    reason: str
    next_seq: int
    prev: bytes
    taken: int
    drop_pending: int  # the oldest pending readings that were sealed into lost batches
    forget_below: int  # batches below this seq were acknowledged: no need to publish again
    lost: list[tuple[int, int]]  # seq ranges sealed but gone, maybe never acknowledged
    receipts: list[DropReceipt]  # to sign into the next batch: old ones still unconfirmed first


def plan(rec: Record, *, spool_id: str, next_seq: int, taken: int, pending: int) -> Plan:
    """The way back onto the chain for a spool at `next_seq` <= `rec.seq`.

    The same spool (same id) that went back in time, or an older spool of this device (it has
    sealed batches), is "rolled back"; a new, empty spool is "replaced". Lost are the batches
    the record lists as not acknowledged that the spool no longer holds; the oldest pending
    readings already counted in `rec.taken` went into lost batches and must not be signed
    again (readings leave the queue in order, so they are the first ones)."""
    reason = LOSS_ROLLED_BACK if spool_id == rec.spool or next_seq > 0 else LOSS_REPLACED
    gone = [e for e in rec.unacked if e.seq >= next_seq]
    runs = [
        [e for _, e in group]
        for _, group in itertools.groupby(enumerate(gone), key=lambda ie: ie[1].seq - ie[0])
    ]
    new = [
        DropReceipt(
            sum(e.n for e in run),
            min(e.first_t for e in run),
            max(e.sealed for e in run),
            loss_why(reason, run[0].seq, run[-1].seq),
        )
        for run in runs
    ]
    # A statement made after an earlier loss whose carrying batch is gone too is made again.
    again = [s.receipt for s in rec.stated if s.carrier is None or s.carrier >= next_seq]
    return Plan(
        reason=reason,
        next_seq=rec.seq + 1,
        prev=rec.batch,
        taken=max(taken, rec.taken),
        drop_pending=max(0, min(pending, rec.taken - taken)),
        forget_below=rec.unacked[0].seq if rec.unacked else rec.seq + 1,
        lost=[(run[0].seq, run[-1].seq) for run in runs],
        receipts=[r for r in again if r not in new] + new,
    )


class HighWater:
    """The record file; read once at open, then written by the spool's one thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._gen = 0
        self._slot = SLOT

    def read(self, did: str) -> Record | None:
        """The newest valid record; None when there is no file or it is another device's.
        Raises SpoolError when the file exists but holds no valid record."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise SpoolError(self._unusable(f"cannot be read ({e.strerror or e})")) from None
        half = len(data) // 2
        if half == 0 or len(data) % 2:
            raise SpoolError(self._unusable(f"has {len(data)} bytes, not two equal slots"))
        found: list[tuple[int, Record]] = []
        problems: list[str] = []
        for i in (0, 1):
            try:
                got = _decode(data[i * half : (i + 1) * half])
            except (ValueError, TypeError, KeyError, IndexError) as e:
                problems.append(f"slot {i}: {e}")
                continue
            if got is not None:
                found.append(got)
        if not found:
            raise SpoolError(self._unusable("holds no valid record (" + "; ".join(problems) + ")"))
        if problems:  # expected after a power cut in the middle of a write: the other is older
            log.info("chain record %s: %s; using the other slot", self.path, problems[0])
        self._gen, rec = max(found, key=lambda g: g[0])
        self._slot = half
        if rec.did != did:
            log.warning(
                "chain record %s belongs to %s, not to this device's key %s: ignored, it will "
                "be replaced",
                self.path,
                rec.did,
                did,
            )
            return None
        return rec

    def write(self, rec: Record) -> None:
        """Make `rec` durable; raises OSError (the previous record then stays valid)."""
        gen = self._gen + 1
        body = _encode(rec, gen)
        if self._fd is None or len(body) >= self._slot:
            self._create(body, gen)
        else:
            # The record and its newline only: what follows in the slot is ignored, so one
            # page is written, not the whole slot.
            os.pwrite(self._fd, body + b"\n", (gen % 2) * self._slot)
            os.fdatasync(self._fd)
        self._gen = gen

    def _create(self, body: bytes, gen: int) -> None:
        """A whole new file (the first write, or a record that outgrew its slot): through a
        temporary file and a rename, so the record before stays whole until then."""
        slot = SLOT
        while len(body) >= slot:
            slot *= 2
        mine, blank = body.ljust(slot - 1) + b"\n", b" " * (slot - 1) + b"\n"
        write_atomic(self.path, mine + blank if gen % 2 == 0 else blank + mine, mode=0o600)
        self.close()
        self._fd = os.open(self.path, os.O_RDWR | os.O_CLOEXEC)
        self._slot = slot

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _unusable(self, what: str) -> str:
        return (
            f"chain record {self.path} {what}. It holds the last seq this device signed, so "
            f"that a lost or rolled-back spool never makes it sign a seq twice, and the gateway "
            f"does not start without it. Do not put an old copy back from a backup: a record "
            f"older than what was published lets the gateway sign those seqs again. Move it "
            f"aside: the chain then continues from the spool, or from the chain head the "
            f"broker keeps for this device when that is further (it is read before anything "
            f"is sealed); only a broker that lost its retained messages cannot tell."
        )


# --- the slot format ---------------------------------------------------------------------------


def _canonical(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def _encode(rec: Record, gen: int) -> bytes:
    doc: dict[str, Any] = {
        "format": FORMAT,
        "gen": gen,
        "did": rec.did,
        "spool": rec.spool,
        "seq": rec.seq,
        "batch": rec.batch.hex(),
        "sealed": rec.sealed,
        "taken": rec.taken,
        "unacked": [[e.seq, e.n, e.first_t, e.sealed] for e in rec.unacked],
        "stated": [
            [s.carrier, s.receipt.n, s.receipt.t_from, s.receipt.t_to, s.receipt.why]
            for s in rec.stated
        ],
    }
    body = _canonical(doc)
    check = hashlib.sha256(body.encode()).hexdigest()[:32]
    return (body[:-1] + f',"check":"{check}"}}').encode()


def _decode(raw: bytes) -> tuple[int, Record] | None:
    """(generation, record) of one slot; None for a slot never written; raises ValueError (or
    TypeError, KeyError, IndexError) naming what is wrong with a damaged one."""
    text = raw.split(b"\n", 1)[0].strip(b" \0")
    if not text:
        return None
    doc = json.loads(text.decode("utf-8"))
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    check = doc.pop("check", None)
    if check != hashlib.sha256(_canonical(doc).encode()).hexdigest()[:32]:
        raise ValueError("checksum mismatch")
    if doc.get("format") != FORMAT:
        raise ValueError(f"format {doc.get('format')!r}, not {FORMAT}")
    batch = bytes.fromhex(_typed(doc, "batch", str))
    if len(batch) != 32:
        raise ValueError("batch id is not 32 bytes")
    sealed = doc["sealed"]
    rec = Record(
        did=_typed(doc, "did", str),
        spool=_typed(doc, "spool", str),
        seq=_typed(doc, "seq", int),
        batch=batch,
        sealed=None if sealed is None else _number(sealed),
        taken=_typed(doc, "taken", int),
        unacked=tuple(
            Entry(_int(s), _int(n), _number(a), _number(b))
            for s, n, a, b in _typed(doc, "unacked", list)
        ),
        stated=tuple(
            Stated(
                DropReceipt(_int(n), _number(a), _number(b), _str(why)),
                None if c is None else _int(c),
            )
            for c, n, a, b, why in _typed(doc, "stated", list)
        ),
    )
    return _typed(doc, "gen", int), rec


def _typed(doc: dict[str, Any], key: str, kind: type[Any]) -> Any:
    value = doc[key]
    if type(value) is not kind:
        raise ValueError(f"{key} is not {kind.__name__}")
    return value


def _int(x: Any) -> int:
    if type(x) is not int:
        raise ValueError(f"{x!r} is not an integer")
    return x


def _number(x: Any) -> float:
    if type(x) not in (int, float):
        raise ValueError(f"{x!r} is not a number")
    return float(x)


def _str(x: Any) -> str:
    if not isinstance(x, str):
        raise ValueError(f"{x!r} is not text")
    return x
