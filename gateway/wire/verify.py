"""Verification for anyone (spec section 9): messages in, one finding per message.

A `Verifier` checks each message in the spec's order - envelope and signature, did against kid,
allow-list, payload, then the device's chain - and keeps the chain state in memory. It never
raises on what arrives: every message, however broken, becomes exactly one `Finding`. Files are
read here (`verify_paths`); a live broker feeds it from gateway/cli/verify_live.py, so nothing
here needs an MQTT client.

Chain decisions the spec leaves open, written down here (and in the project's docs):
- A zero `prev` at seq > 0, or a non-zero one at seq 0, is "prev-mismatch", checked before the
  chain, so it also applies to the first batch a verifier sees.
- A lower, unseen seq is "reordered" when every neighbour already seen links to it (seq-1's id
  is its prev, seq+1's prev is its id) and "replay" when one does not. A neighbour not seen yet
  is checked when it arrives, so the accepted batches always form a consistent chain, and
  honest batches delivered in any order are never called forgeries.
- Birth and attestation messages are signature- and did-checked and held to every field rule
  of spec v1.1 (payloads.check_birth, check_attestation); they do not touch the chain.
  Attestors are not devices, so the allow-list does not apply to attestations.
- Bytes are judged before they are decoded: a message is held to the cap of its kind
  (`cap_of`), and every payload goes through the strict scan (gateway/wire/strict.py), which
  also settles the deterministic encoding; nothing a stranger sent is re-encoded.
- Memory does not grow with what strangers send, only with what a chain needs: a link keeps the
  batch id, prev, record count and clock flag, never the message. An equivocation keeps the
  later message (the first-seen batch is named by its id: it was a finding already) for the
  first EVIDENCE_PER_DEVICE per device and EVIDENCE_BYTES in all; beyond that it is counted.
  A verifier may be given `max_chains`: live, a broker can show it any number of throwaway
  devices, so the chain touched least recently is forgotten to make room for a new one.
  It may also be given a `window`: live, a chain keeps only the links of its last `window`
  seqs (older ones are forgotten, their records counted). A batch of a forgotten seq cannot be
  told apart from a duplicate, an equivocation or a replay; it is called "replay" (a signed
  batch far out of place), with a detail saying it was too old to judge. With a window, gaps
  and stated losses keep the newest GAPS_KEPT of each, and count the rest.
- A gap is never more than a gap. When the batch after it carries v1.1 loss receipts (drop
  receipts whose `why` is "<reason> seq <first>[-<last>]") covering missing seqs, the gap's
  detail gives the device's stated reason; such a statement changes no verdict.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from gateway.core.errors import ConfigError, PathNotFoundError, VerifyError
from gateway.wire import cose, limits, payloads, strict
from gateway.wire.identity import device_id_of, did_of, public_key_of_did
from gateway.wire.loss import loss_note, span, stated_losses

#: The most read of a message whose kind is not known yet (a file, `prove`'s input): the cap of
#: gateway/wire/limits.py; a message's own kind may hold it to less (`cap_of`).
MAX_MESSAGE = limits.DEFAULT_CAP
#: Equivocations kept whole per device, and the bytes of kept messages in all; later ones are
#: still reported, and counted in `Verifier.evidence_dropped`.
EVIDENCE_PER_DEVICE = 4
EVIDENCE_BYTES = 16 * 1024 * 1024
#: With a window, the newest gaps and stated losses kept (the rest are counted).
GAPS_KEPT = 1000
_CHAIN_PROBLEMS = frozenset({"equivocation", "replay", "prev-mismatch"})  # signed, so attributable
# Kinds that leave the message acceptable; every other kind makes it invalid ("forged").
ACCEPTED = frozenset({"valid", "duplicate", "gap", "reordered", "birth", "attestation"})
# Of those, the kinds of a batch that becomes a new link of its device's chain.
LINKED = frozenset({"valid", "gap", "reordered"})
KIND_ORDER = (
    "valid", "duplicate", "gap", "reordered", "birth", "attestation",
    "equivocation", "replay", "prev-mismatch", "bad-signature", "did-mismatch", "unknown-device",
    "bad-root", "malformed", "non-deterministic", "nan", "base-fields", "bad-record",
)  # fmt: skip


@dataclass(frozen=True)
class Finding:
    """What the verifier concluded about one message."""

    kind: str
    did: str | None
    seq: int | None
    batch_id: bytes | None
    records: int
    detail: str
    source: str

    @property
    def forged(self) -> bool:
        """True when the message is invalid (forged, tampered, replayed, equivocating...)."""
        return self.kind not in ACCEPTED

    @property
    def device_id(self) -> str | None:
        return device_id_of(self.did) if self.did else None


@dataclass(frozen=True)
class Equivocation:
    """A device signed two batches for one seq: the first seen stays in the chain (`kept_id`);
    `message` is the later one, whole, as it arrived."""

    did: str
    seq: int
    kept_id: bytes
    message: bytes


@dataclass(slots=True)
class _Link:
    # Not the message: a chain of 4 MiB batches from throwaway keys would hold every one.
    batch_id: bytes
    prev: bytes
    records: int
    synced: bool


@dataclass
class _Chain:
    links: dict[int, _Link]
    last: int
    problems: Counter[str] = field(default_factory=Counter)
    evidence: int = 0  # equivocations kept whole
    forgotten: int = 0  # links dropped below the window
    forgotten_records: int = 0  # and their records, still counted as verified

    def forget_below(self, floor: int, window: int) -> None:
        """Drop the links of seqs below `floor`. Links are mostly added in seq order, so the
        oldest are first; one added late (reordered) may sit behind a newer one, and is
        dropped when the dict is rebuilt, which happens at most once per `window` links."""
        links = self.links
        while links:
            s = next(iter(links))
            if s >= floor:
                break
            self._drop(s)
        if len(links) > 2 * window:
            for s in [s for s in links if s < floor]:
                self._drop(s)
            self.links = dict(links)  # a dict does not shrink by deletion

    def _drop(self, seq: int) -> None:
        self.forgotten_records += self.links.pop(seq).records
        self.forgotten += 1


def normalise_did(entry: str) -> str:
    """A did:key or a bare device id (`z6Mk…`) as a did:key; ValueError when it is neither."""
    did = entry if entry.startswith("did:") else "did:key:" + entry
    public_key_of_did(did)  # ValueError when it is not an Ed25519 did:key
    return did


def _short(b: bytes) -> str:
    return b.hex()[:16]


class Verifier:
    """Checks messages in arrival order and keeps each device's chain in memory."""

    def __init__(
        self,
        *,
        allowed_dids: Collection[str] | None = None,
        max_chains: int | None = None,
        window: int | None = None,
    ) -> None:
        self.allowed: frozenset[str] | None = None
        if allowed_dids is not None:
            good: set[str] = set()
            bad: list[str] = []
            for entry in allowed_dids:
                try:
                    good.add(normalise_did(entry.strip()))
                except ValueError:
                    bad.append(f"{entry!r} is not an Ed25519 did:key or device id")
            if bad:
                raise ConfigError(bad, source="allow-list")
            self.allowed = frozenset(good)
        self.counts: Counter[str] = Counter()
        #: The most chains kept (None: all); the one touched least recently goes first.
        self.max_chains = max_chains
        self.chains_forgotten = 0
        #: The most recent seqs whose links a chain keeps (None: all); see the module doc.
        self.window = window
        self.evidence: list[Equivocation] = []
        self.evidence_dropped = 0  # equivocations reported but not kept (the bounds above)
        self._evidence_bytes = 0
        self.gaps: list[tuple[str, int, int]] = []  # (did, first missing seq, last missing seq)
        # Missing seqs the device itself stated lost: (did, first seq, last seq, reason).
        self.stated_losses: list[tuple[str, int, int, str]] = []
        self.gaps_dropped = 0  # gaps and stated losses beyond GAPS_KEPT (only with a window)
        self._chains: dict[str, _Chain] = {}

    # --- queries -----------------------------------------------------------------------------

    def verified_records(self) -> dict[str, int]:
        """Records per did in the batches accepted so far (each batch counted once)."""
        return {
            did: c.forgotten_records + sum(x.records for x in c.links.values())
            for did, c in self._chains.items()
        }

    def missing(self, did: str) -> list[int]:
        """Seqs not seen between the lowest and highest accepted seq of `did` (with a window:
        the lowest still kept)."""
        c = self._chains.get(did)
        if c is None:
            return []
        return [s for s in range(min(c.links), c.last) if s not in c.links]

    def status(self, did: str) -> str:
        """The chain status text of an attestation (spec section 6) for `did`."""
        c = self._chains.get(did)
        if c is None:
            return "ok"
        if c.problems["equivocation"]:
            return "equivocation"
        if c.problems["replay"] or c.problems["prev-mismatch"]:
            return "replay"
        return "gap" if self.missing(did) else "ok"

    # --- checking ----------------------------------------------------------------------------

    def check(self, message: bytes, *, source: str = "") -> Finding:
        """One finding for one message; never raises on bad input."""
        try:
            finding = self._check(bytes(message), source)
        except Exception as e:  # a bug or a decoder surprise must not stop a verifier
            detail = f"unexpected {type(e).__name__}: {e}"
            finding = Finding("malformed", None, None, None, 0, detail, source)
        self.counts[finding.kind] += 1
        if finding.kind in _CHAIN_PROBLEMS and finding.did in self._chains:
            self._chains[finding.did].problems[finding.kind] += 1
        return finding

    def _check(self, message: bytes, source: str) -> Finding:
        allowed = self.allowed
        found = examine(
            message, source, registered=None if allowed is None else allowed.__contains__
        )
        if isinstance(found, Finding):
            return found
        return self._chain(found)

    def _chain(self, x: Examined) -> Finding:
        b, bid, did = x.batch, x.batch_id, x.did
        chain = self._chains.get(did)
        window = self.window
        if chain is not None and window is not None and b.seq <= chain.last - window:
            return x.finding(
                "replay",
                f"too old to judge: seq {b.seq} is before the last {window} seqs kept of the "
                f"chain (up to {chain.last})",
            )
        kind, detail = decide(
            b.seq,
            b.prev,
            bid,
            last=None if chain is None else chain.last,
            link=lambda s: None if chain is None else chain.links.get(s),
            stated=b.dropped,
        )
        out = x.finding(kind, detail)
        if kind in ("prev-mismatch", "replay", "duplicate", "malformed"):
            return out
        if kind == "equivocation":
            assert chain is not None
            self._keep_evidence(
                chain, Equivocation(did, b.seq, chain.links[b.seq].batch_id, x.message)
            )
            return out
        link = _Link(bid, b.prev, len(b.records), b.clock["synced"] is True)
        if chain is None:
            if self.max_chains is not None:
                while self._chains and len(self._chains) >= self.max_chains:
                    del self._chains[next(iter(self._chains))]
                    self.chains_forgotten += 1
            self._chains[did] = _Chain(links={b.seq: link}, last=b.seq)
            return out
        self._chains[did] = self._chains.pop(did)  # most recently touched last
        if kind == "gap":
            self._note(self.gaps, (did, chain.last + 1, b.seq - 1))
            for first, last, reason in stated_losses(b.dropped, chain.last + 1, b.seq - 1):
                self._note(self.stated_losses, (did, first, last, reason))
        chain.links[b.seq] = link
        chain.last = max(chain.last, b.seq)
        if window is not None:
            chain.forget_below(chain.last - window + 1, window)
        return out

    def _note(self, kept: list[Any], item: Any) -> None:
        kept.append(item)
        if self.window is not None and len(kept) > 2 * GAPS_KEPT:
            self.gaps_dropped += len(kept) - GAPS_KEPT
            del kept[:-GAPS_KEPT]

    def _keep_evidence(self, chain: _Chain, e: Equivocation) -> None:
        if (
            chain.evidence >= EVIDENCE_PER_DEVICE
            or self._evidence_bytes + len(e.message) > EVIDENCE_BYTES
        ):
            self.evidence_dropped += 1
            return
        chain.evidence += 1
        self._evidence_bytes += len(e.message)
        self.evidence.append(e)


@dataclass(frozen=True)
class Examined:
    """A batch that passed spec section 9 steps 1-4; the chain (step 5) is the caller's."""

    did: str
    batch_id: bytes
    batch: payloads.Batch
    message: bytes
    source: str

    def finding(self, kind: str, detail: str) -> Finding:
        b = self.batch
        return Finding(kind, self.did, b.seq, self.batch_id, len(b.records), detail, self.source)


_KIND_OF_TYP = {
    cose.TYP_BATCH: "batch",
    cose.TYP_BIRTH: "birth",
    cose.TYP_ATTESTATION: "attestation",
    cose.TYP_HEAD: "head",
}


def cap_of(message: bytes) -> tuple[str, int]:
    """The kind and byte cap a message is held to: by the typ its protected header names
    (limits.CAPS), else the default cap. Reads the header only."""
    kind = _KIND_OF_TYP.get(cose.typ_of(message) or "", "")
    return kind or "unknown", limits.CAPS.get(kind, limits.DEFAULT_CAP)


def examine(
    message: bytes, source: str = "", *, registered: Callable[[str], bool] | None = None
) -> Finding | Examined:
    """Steps 1-4 of spec section 9 for one message: the finding that settles it (any invalid
    message, a birth, an attestation), or the checked batch, ready for the chain. Never
    raises: whatever goes wrong inside is a "malformed" finding."""
    try:
        return _examine(bytes(message), source, registered)
    except Exception as e:  # a bug or a decoder surprise is an answer, never a retry
        return Finding("malformed", None, None, None, 0, f"unexpected {type(e).__name__}", source)


def _examine(
    message: bytes, source: str, registered: Callable[[str], bool] | None
) -> Finding | Examined:
    # Judged from the length before anything beyond the protected header is decoded.
    kind, limit = cap_of(message)
    if len(message) > limit:
        detail = f"{len(message)} bytes, over the {limit} byte cap for {kind} messages"
        return Finding("malformed", None, None, None, 0, detail, source)
    # Steps 1 and 2: envelope, typ, signature.
    try:
        s = cose.verify1(message)
    except VerifyError as e:
        did, seq, n = _claims(message) if e.kind == "bad-signature" else (None, None, 0)
        return Finding(e.kind, did, seq, None, n, e.detail, source)
    did = did_of(s.public_key)
    bid = hashlib.sha256(s.payload).digest()
    if s.typ == cose.TYP_MODEL:
        # Signed model updates go to gateways, not into a device's chain.
        return Finding("malformed", did, None, bid, 0, "a model bundle, not a batch", source)

    def finding(kind: str, detail: str, seq: int | None = None, n: int = 0) -> Finding:
        return Finding(kind, did, seq, bid, n, detail, source)

    try:
        sc = payloads.scan_payload(s.payload)
    except payloads.PayloadError as e:
        return finding(e.kind, e.detail)
    m = sc.value
    if not isinstance(m, dict) or not isinstance(m.get(1), str):
        return finding("malformed", "payload is not a map with the signer's did at key 1")
    seq = m.get(2) if s.typ == cose.TYP_BATCH and type(m.get(2)) is int else None
    n = len(m[5]) if s.typ == cose.TYP_BATCH and isinstance(m.get(5), list) else 0
    if m[1] != did:
        return finding("did-mismatch", f"payload names {_printable(m[1])} but kid is {did}", seq, n)
    if s.typ == cose.TYP_ATTESTATION:
        return _other_payload(m, finding, "attestation")
    # Step 3: only registered devices.
    if registered is not None and not registered(did):
        return finding("unknown-device", "not in the allow-list", seq, n)
    if s.typ == cose.TYP_BIRTH:
        return _other_payload(m, finding, "birth")
    # Step 4: the payload itself.
    try:
        b = payloads.decode_batch(s.payload, decoded=sc)
    except payloads.PayloadError as e:
        return finding(e.kind, e.detail, seq, n)
    problem = _batch_shape(b)
    if problem:
        return finding("malformed", problem, b.seq, n)
    return Examined(did, bid, b, message, source)


def _printable(x: Any, limit: int = 80) -> str:
    """A stranger's value in a finding's one line: repr, cut short."""
    r = repr(x)
    return r if len(r) <= limit else r[: limit - 3] + "..."


class LinkView(Protocol):
    @property
    def batch_id(self) -> bytes: ...
    @property
    def prev(self) -> bytes: ...


def decide(
    seq: int,
    prev: bytes,
    bid: bytes,
    *,
    last: int | None,
    link: Callable[[int], LinkView | None],
    stated: Sequence[Mapping[str, Any]] = (),
) -> tuple[str, str]:
    """Step 5 of spec section 9 for one checked batch: (kind, detail), given the device's chain
    as the verifier has it: `last`, the highest accepted seq (None: no chain yet), and
    `link(seq)`, the accepted batch at a seq. `stated`: the batch's drop receipts (key 9);
    loss receipts among them name the reason of a gap in its detail, nothing else. Pure: the
    caller stores what it accepts. Never raises: arguments it cannot judge (a seq that is not
    an integer, a link that is not one) give a "malformed" verdict."""
    try:
        return _decide(seq, prev, bid, last=last, link=link, stated=stated)
    except Exception as e:
        return "malformed", f"cannot judge the chain: unexpected {type(e).__name__}"


def _decide(
    seq: int,
    prev: bytes,
    bid: bytes,
    *,
    last: int | None,
    link: Callable[[int], LinkView | None],
    stated: Sequence[Mapping[str, Any]],
) -> tuple[str, str]:
    if type(seq) is not int or seq < 0 or (last is not None and type(last) is not int):
        return "malformed", "seq is not an unsigned integer"
    if not (type(prev) is bytes and type(bid) is bytes):
        return "malformed", "prev and batch id are byte strings"
    if seq == 0 and prev != payloads.ZERO_PREV:
        return "prev-mismatch", "seq 0 must have the all-zero prev"
    if seq > 0 and prev == payloads.ZERO_PREV:
        return "prev-mismatch", f"seq {seq} has the all-zero prev of a first batch"
    if last is None:
        return "valid", f"starts the chain at seq {seq}"
    seen = link(seq)
    if seen is not None:
        if seen.batch_id == bid:
            return "duplicate", "already seen"
        return "equivocation", f"seq {seq} was already batch {_short(seen.batch_id)}"
    if seq == last + 1:
        before = link(last)
        if before is None or prev != before.batch_id:
            got = "?" if before is None else _short(before.batch_id)
            return "prev-mismatch", f"prev {_short(prev)} is not batch {last} ({got})"
        return "valid", "extends the chain"
    if seq > last:
        return "gap", f"seq {span(last + 1, seq - 1)} missing" + loss_note(stated, last, seq)
    before, after = link(seq - 1), link(seq + 1)
    if before is not None and before.batch_id != prev:
        return "replay", f"prev does not link to batch {seq - 1}"
    if after is not None and after.prev != bid:
        return "replay", f"batch {seq + 1} does not link to this batch"
    linked = [f"{x}" for x, y in ((seq - 1, before), (seq + 1, after)) if y is not None]
    return "reordered", ("links to " + " and ".join(linked)) if linked else "no neighbour yet"


def _claims(message: bytes) -> tuple[str | None, int | None, int]:
    """Best-effort did, seq and record count of a message whose signature failed (unproven).
    The envelope parsed strictly already; the payload is scanned like any other."""
    try:
        v = strict.loads(message[1:])
        kid = strict.loads(v[0])[4]
        did = did_of(kid[2:]) if isinstance(kid, bytes) and len(kid) == 34 else None
        m = strict.loads(v[2])
        seq = m.get(2) if type(m.get(2)) is int else None
        n = len(m[5]) if isinstance(m.get(5), list) else 0
        return did, seq, n
    except Exception:
        return None, None, 0


def _other_payload(m: dict[Any, Any], finding: Callable[..., Finding], kind: str) -> Finding:
    """Birth and attestation payloads (already scanned: deterministic, no NaN, no tags): every
    field as spec sections 5 and 6 (v1.1) say."""
    try:
        if kind == "birth":
            payloads.check_birth(m)
        else:
            payloads.check_attestation(m)
    except payloads.PayloadError as e:
        return finding(e.kind, e.detail)
    if kind == "birth":
        return finding("birth", f"version {_printable(m[2])}, next seq {m[8]}")
    revision = f", revision {m[11]}" if 11 in m else ""
    return finding("attestation", f"about {m[2]}, chain {m[8]!r}{revision}")


def is_finite_number(x: Any) -> bool:
    """An int or float (not a bool) that is finite."""
    return type(x) in (int, float) and math.isfinite(x)


def _batch_shape(b: payloads.Batch) -> str | None:
    """The batch fields decode_batch leaves loose (spec section 3 types)."""
    if set(b.clock) != {"synced", "source"} or not isinstance(b.clock["source"], str):
        return 'clock must be exactly {"synced": bool, "source": text}'
    for m in b.modules:
        if not (
            isinstance(m, list)
            and len(m) == 3
            and isinstance(m[0], str)
            and isinstance(m[1], str)
            and isinstance(m[2], bytes)
            and len(m[2]) == 32
        ):
            return "modules must be [name, version, sha256] entries"
    for d in b.dropped:
        if not (
            isinstance(d, dict)
            and set(d) == {"n", "from", "to", "why"}
            and type(d["n"]) is int
            and d["n"] > 0
            and is_finite_number(d["from"])
            and is_finite_number(d["to"])
            and isinstance(d["why"], str)
        ):
            return 'dropped entries must be {"n", "from", "to", "why"}'
    return None


def first_tag(data: bytes) -> int | None:
    """The first tag number in a definite-length CBOR item, None when there is none. For
    trusted bytes (tests, tools): untrusted ones go through gateway/wire/strict.py."""
    pos, todo = 0, [1]  # items still to read at each open nesting level
    while todo:
        if todo[-1] == 0:
            todo.pop()
            continue
        todo[-1] -= 1
        ib = data[pos]
        pos += 1
        major, ai = ib >> 5, ib & 0x1F
        if ai < 24:
            arg = ai
        elif ai < 28:
            size = 1 << (ai - 24)
            arg = int.from_bytes(data[pos : pos + size], "big")
            pos += size
        else:
            raise ValueError("indefinite length or reserved head")
        if major == 6:
            return arg
        if major in (2, 3):
            pos += arg
        elif major == 4:
            todo.append(arg)
        elif major == 5:
            todo.append(2 * arg)
    return None


# --- files ------------------------------------------------------------------------------------


def _files(path: Path) -> list[Path]:
    if not path.is_dir():
        return [path]
    found = []
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).parts
        if p.is_file() and not any(part.startswith(".") for part in rel):
            found.append(p)
    return found


def verify_paths(paths: Sequence[Path], verifier: Verifier) -> list[Finding]:
    """Check files, each one raw COSE message as the broker delivered it, and directories of
    such files (recursively, sorted by path, hidden files skipped). A path that does not
    exist raises PathNotFoundError before anything is checked."""
    for p in paths:
        if not p.exists():
            raise PathNotFoundError(f"{p} does not exist")
    findings = []
    for p in paths:
        for f in _files(p):
            try:
                with f.open("rb") as fh:
                    data = fh.read(MAX_MESSAGE + 1)  # enough to know it is too big
            except OSError as e:
                findings.append(_refused(verifier, f"cannot read: {e}", str(f)))
                continue
            if len(data) > MAX_MESSAGE:
                detail = f"over the {MAX_MESSAGE} byte cap of any message read from a file"
                findings.append(_refused(verifier, detail, str(f)))
                continue
            findings.append(verifier.check(data, source=str(f)))
    return findings


def _refused(verifier: Verifier, detail: str, source: str) -> Finding:
    finding = Finding("malformed", None, None, None, 0, detail, source)
    verifier.counts[finding.kind] += 1
    return finding


# --- reporting --------------------------------------------------------------------------------


def format_finding(f: Finding) -> str:
    """One line: '<source>: <kind> device=<device id> seq=<n> records=<k> <detail>'."""
    device = f.device_id or "-"
    seq = "-" if f.seq is None else str(f.seq)
    return f"{f.source or '-'}: {f.kind} device={device} seq={seq} records={f.records} {f.detail}"


class Tally:
    """What the summary and the exit code need of many findings - the count of each kind -
    without the findings: a live verifier sees messages for as long as it runs."""

    def __init__(self, findings: Iterable[Finding] = ()) -> None:
        self.counts: Counter[str] = Counter(f.kind for f in findings)

    def add(self, finding: Finding) -> None:
        self.counts[finding.kind] += 1

    def update(self, other: Tally) -> None:
        self.counts.update(other.counts)


def _counts(findings: Iterable[Finding] | Tally) -> Counter[str]:
    return findings.counts if isinstance(findings, Tally) else Tally(findings).counts


def summary(findings: Iterable[Finding] | Tally) -> str:
    """Counts per kind on one line, accepted kinds first."""
    counts = _counts(findings)
    total = sum(counts.values())
    order = {k: i for i, k in enumerate(KIND_ORDER)}
    kinds = sorted(counts, key=lambda k: (order.get(k, len(order)), k))
    invalid = sum(n for k, n in counts.items() if k not in ACCEPTED)
    parts = ", ".join(f"{counts[k]} {k}" for k in kinds) or "nothing"
    return f"{total} messages: {parts}; {invalid} invalid"


def exit_code(findings: Iterable[Finding] | Tally) -> int:
    """1 when any message is invalid, else 0."""
    return 1 if any(n and k not in ACCEPTED for k, n in _counts(findings).items()) else 0
