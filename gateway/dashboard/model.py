"""What the dashboard knows about each gateway, built from the messages of spec section 8.

Pure and synchronous: `Fleet.handle(topic, payload)` takes one MQTT message (`place`, the
cheap checks, then `apply`; the intake runs `judge`, the costly part of a birth or batch, on
its worker thread in between), `take_update()` hands the server what changed since it last
asked, `snapshot()` everything. Nothing here trusts
a message: each is refused unread beyond its topic's byte cap; COSE messages pass the strict
decoder, then the project's verifier (`gateway.wire.verify.examine`); a gateway is shown only once
its own key signed a birth or batch; its unsigned JSON is checked field by field (fields.py).

Memory is bounded: at most `max_devices` gateways, `max_series` sparkline series per gateway,
`points` points per series (one per `window / points` seconds: the newest reading of that
bucket, flagged when any reading in it was) and `MAX_ANOMALIES` recent anomalies per gateway.
A series keeps its points in three flat arrays, 17 bytes a point.

When a gateway was last heard matters as much as what it said: its retained `status` says
`online` until the broker publishes its Last Will, and a Will the broker never sent (it
restarted, or the gateway hangs with its connection open) would leave a dead gateway "online"
for good. So `seen` is when the gateway last said something live, or the time it wrote into a
retained message (a retained message arrives when the dashboard subscribes, however old it
is), and `health_every` how often it publishes health; the page shows a gateway that is
online by its status but quiet for several health intervals as silent.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from array import array
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import cbor2

from gateway.dashboard import fields
from gateway.dashboard.fields import count as _count
from gateway.dashboard.fields import flags as _flags
from gateway.dashboard.fields import integer as _int
from gateway.dashboard.fields import moment as _moment
from gateway.dashboard.fields import number as _num
from gateway.dashboard.fields import text as _text
from gateway.wire import cose, limits, payloads, strict
from gateway.wire.identity import device_id_of
from gateway.wire.score import CHAIN_FACTOR, explain
from gateway.wire.verify import Examined, Finding, examine

WINDOW = 3600.0  # seconds of history behind each sparkline
POINTS = 360  # points per series: one per 10 s over the hour
MAX_DEVICES = 500
MAX_SERIES = 32  # sparkline series per gateway
MAX_ANOMALIES = 50  # recent flagged readings kept per gateway
MAX_JSON = max(limits.CAPS["state"], limits.CAPS["health"])  # beyond: ignored unread
FUTURE = 300.0  # readings stamped further ahead than this are not plotted (a wrong clock)
KINDS = ("status", "state", "health", "birth", "batch", "attestation")
# A device id is base58btc (spec section 1); anything else on the topic level is not a device.
DEVICE_ID = re.compile(r"[1-9A-HJ-NP-Za-km-z]{1,64}")
_TEXT = fields.TEXT
# Unsigned status, state, health and attestation messages of gateways not shown (yet): kept
# until the gateway's signed birth or batch shows it, the oldest dropped beyond these bounds.
PENDING_DEVICES = 256
PENDING_BYTES = 4 * 1024 * 1024
UNSIGNED = ("status", "state", "health", "attestation")
# Signed kinds: verifying one costs time (a 4 MiB batch, half a second, on the intake's worker
# thread), so a message whose bytes were taken lately is not verified again, whoever replays it
# and on whichever topic (the same bytes are good on one device's topic only).
SIGNED = ("birth", "batch", "attestation")
RECENT_MESSAGES = 4096  # sha256 digests remembered: 32 bytes each
RECENT_BATCHES = 1024  # batch ids remembered per device, so a batch counts once
# Readings of one quantity taken from one batch into the sparklines, the newest: a sparkline
# has one point per bucket, and a batch of 20,000 readings would cost 20,000 merges.
BATCH_READINGS = 360
# ...and of all quantities together, so the model's share of a batch (in the event loop) stays
# the same however many records and quantities it holds: the rest is chosen off the loop.
BATCH_TOTAL = 2048
_ENVELOPE_TAGS = frozenset({cose.COSE_SIGN1_TAG})


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json(payload: bytes) -> dict[str, Any] | None:
    """A JSON object, or None: too big, not UTF-8, not an object, or NaN/Infinity inside."""
    if len(payload) > MAX_JSON:
        return None
    try:
        doc = json.loads(payload.decode("utf-8"), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return None
    return doc if isinstance(doc, dict) else None


class Series:
    """One (sensor, quantity) over the last `window` seconds, at most `cap` points.

    Point i is (t[i], v[i], f[i]): the newest reading of its `step`-second bucket (NaN when the
    read failed) and whether any reading in the bucket was flagged. Points stay in time order;
    a late reading (from a batch after the state, or a gateway catching up) merges into its
    bucket or is inserted in place."""

    __slots__ = ("cap", "dirty", "f", "step", "t", "unit", "v", "window")

    def __init__(self, unit: str, *, window: float = WINDOW, cap: int = POINTS) -> None:
        self.unit = unit
        self.window = window
        self.cap = cap
        self.step = window / cap
        self.t = array("d")
        self.v = array("d")
        self.f = bytearray()
        self.dirty: set[int] = set()  # buckets changed since the server last took them

    def __len__(self) -> int:
        return len(self.t)

    def add(self, t: float, v: float | None, flagged: bool, now: float) -> bool:
        """Record one reading; False when it is outside the window (or in the future)."""
        if not math.isfinite(t) or t > now + FUTURE or t < now - self.window:
            return False
        value = math.nan if v is None else v
        bucket = math.floor(t / self.step)
        i = len(self.t)  # where t goes: after every point of an earlier or the same bucket
        while i > 0 and math.floor(self.t[i - 1] / self.step) > bucket:
            i -= 1
        if i > 0 and math.floor(self.t[i - 1] / self.step) == bucket:
            j = i - 1  # the bucket has a point: merge
            if t >= self.t[j]:
                self.t[j], self.v[j] = t, value
            self.f[j] |= flagged
        else:
            self.t.insert(i, t)
            self.v.insert(i, value)
            self.f.insert(i, int(flagged))
        self.dirty.add(bucket)
        if len(self.dirty) > self.cap:  # nobody takes them (no server): keep the live ones
            first = math.floor((now - self.window) / self.step)
            self.dirty = {b for b in self.dirty if b >= first}
        self.prune(now)
        return True

    def prune(self, now: float) -> None:
        horizon = now - self.window
        n = 0
        while n < len(self.t) and self.t[n] < horizon:
            n += 1
        n = max(n, len(self.t) - self.cap)
        if n:
            del self.t[:n]
            del self.v[:n]
            del self.f[:n]

    def points(self, buckets: set[int] | None = None) -> list[list[Any]]:
        """[[t, v or None, 0/1], ...] in time order, all or only those in `buckets`."""
        out: list[list[Any]] = []
        for t, v, f in zip(self.t, self.v, self.f, strict=True):
            if buckets is None or math.floor(t / self.step) in buckets:
                out.append([t, None if math.isnan(v) else v, f])
        return out


HEALTH_GAPS = 5  # health intervals remembered to tell how often a gateway publishes health


def why_score(doc: Mapping[str, Any], verified_key: str = "verified") -> list[str] | None:
    """Why an attestation's score is below 1, in words (gateway.wire.score.explain),
    from the factors it carries; None when they are not all there."""
    expected, verified, flagged = (_int(doc.get(k)) for k in ("expected", verified_key, "flagged"))
    status, score = doc.get("status"), _num(doc.get("score"))
    if expected is None or verified is None or flagged is None or status not in CHAIN_FACTOR:
        return None
    return explain(expected, verified, flagged, status, score)


class Device:
    """Everything seen about one gateway."""

    def __init__(self, device_id: str) -> None:
        self.id = device_id
        self.name: str | None = None
        # When the gateway last said something: a live message's arrival, or the time the
        # gateway wrote into a retained one (which may be old); None until either.
        self.seen: float | None = None
        # When its last signed birth or batch that verified arrived: the stalest goes first
        # when the fleet is full.
        self.signed_t = 0.0
        self.health_gaps: deque[float] = deque(maxlen=HEALTH_GAPS)
        self.health_stamp: float | None = None  # the gateway's own "t" of its last health
        self.status: str | None = None  # "online" / "offline" / None (never said)
        self.status_t: float | None = None  # when it changed to what it is; None: not known
        self.latest: dict[str, dict[str, Any]] = {}  # "sensor/quantity" -> the newest reading
        self.state_t: float | None = None  # the gateway's own "updated" of its last state
        self.health: dict[str, Any] | None = None
        self.health_t: float | None = None
        self.birth: dict[str, Any] | None = None
        self.attestation: dict[str, Any] | None = None
        # signer did -> the (epoch start, revision) of its newest attestation taken: an older
        # one republished (a superseded revision, a past epoch) must not replace it
        self.attested: dict[str, tuple[float, int]] = {}
        self.batches = 0  # verified batches seen on the wire, each batch id once
        self.batch_ids: OrderedDict[bytes, None] = OrderedDict()  # the newest RECENT_BATCHES
        self.batch_seq: int | None = None  # the highest verified batch seq seen
        self.batch_t: float | None = None
        self.rejected = 0
        self.last_problem: str | None = None
        self.series: dict[str, Series] = {}
        self.anomalies: deque[dict[str, Any]] = deque(maxlen=MAX_ANOMALIES)
        self.dirty = True

    def heard(self, now: float, stamp: float | None, retained: bool) -> None:
        """A message arrived: live, it is news now; retained, it is as old as the gateway's own
        time in it says (never later than now), and one without a time tells nothing."""
        t = now if not retained else None if stamp is None else min(stamp, now)
        if t is not None and (self.seen is None or t > self.seen):
            self.seen = t

    @property
    def health_every(self) -> float | None:
        """How often the gateway publishes health (the median of its last few intervals)."""
        if not self.health_gaps:
            return None
        gaps = sorted(self.health_gaps)
        return gaps[len(gaps) // 2]

    def summary(self) -> dict[str, Any]:
        """The device as the page shows it, without its series."""
        health = self.health or {}
        flagged = sorted(k for k, r in self.latest.items() if r["af"])
        return {
            "id": self.id,
            "name": self.name,
            "seen": self.seen,
            "health_every": self.health_every,
            "status": self.status,
            "status_t": self.status_t,
            "state_t": self.state_t,
            "latest": self.latest,
            "flagged": flagged,
            "health": self.health,
            "health_t": self.health_t,
            "birth": self.birth,
            "attestation": self.attestation,
            "chain": {
                "sealed": _int(health.get("last_seq")),
                "seen": self.batch_seq,
                "batches": self.batches,
                "batch_t": self.batch_t,
                "rejected": self.rejected,
                "problem": self.last_problem,
            },
            "anomalies": list(self.anomalies),
        }

    def series_json(self) -> dict[str, Any]:
        return {k: {"u": s.unit, "points": s.points()} for k, s in sorted(self.series.items())}


@dataclass(frozen=True)
class Verdict:
    """A COSE message on a device's topic, judged: the payload map as strictly decoded (empty
    when it is not one), and the problem that keeps it from counting ('' when none)."""

    payload: dict[Any, Any]
    found: Finding | Examined | None
    problem: str
    #: a batch's records to plot (`plotted`), chosen with the verdict, off the event loop
    records: tuple[dict[Any, Any], ...] = ()


def judge(prefix: str, device_id: str, kind: str, payload: bytes) -> Verdict:
    """The verifier's verdict on a COSE message on `kind`'s topic of `device_id`, after the
    bytes passed the strict decoder. Pure and thread-safe: the costly part of a signed message
    (it scales with the message), done by the intake's worker thread."""
    m, problem = open_payload(payload)
    if problem:
        return Verdict({}, None, problem)
    try:
        v = examine(payload, source=f"{prefix}/{device_id}/{kind}")
    except Exception as e:  # a verifier that raises has still not verified it
        return Verdict(m, None, f"malformed: {type(e).__name__}")
    if isinstance(v, Finding) and v.kind != kind:
        return Verdict(m, v, f"{v.kind}: {v.detail}"[:200])
    if kind != "attestation" and (v.did is None or device_id_of(v.did) != device_id):
        return Verdict(m, v, "signed by another device's key")
    if kind == "birth":
        return Verdict(m, v, birth_problem(m))
    if isinstance(v, Examined):
        return Verdict(m, v, "", tuple(plotted(v.batch.records)))
    return Verdict(m, v, "")


def open_payload(message: bytes) -> tuple[dict[Any, Any], str]:
    """The payload map of a COSE_Sign1, strictly decoded from its bytes (gateway.wire.strict:
    no tag but the envelope's, definite and bounded lengths, bounded nesting), so nothing
    the verifier is handed can make it build or walk more than the message holds; or the
    problem ('' when none)."""
    try:
        env = strict.loads(message, tags=_ENVELOPE_TAGS)
        if (
            not isinstance(env, cbor2.CBORTag)
            or env.tag != cose.COSE_SIGN1_TAG
            or not isinstance(env.value, list | tuple)
            or len(env.value) != 4
            or not isinstance(env.value[0], bytes)
            or not isinstance(env.value[2], bytes)
        ):
            return {}, "malformed: not a COSE_Sign1"
        strict.scan(env.value[0])
        m = strict.loads(env.value[2])
    except strict.DecodeError as e:
        return {}, f"malformed: {e}"
    if not isinstance(m, dict):
        return {}, "malformed: the payload is not a map"
    return m, ""


def birth_problem(m: Mapping[Any, Any]) -> str:
    """The spec's field rules for a birth (section 3.2) that the page relies on, checked here
    whatever the verifier does: a signed birth that breaks them is not shown ('' when none)."""
    if _text(m.get(2), 1 << 16) is None:
        return "malformed: birth version is not text"
    if not isinstance(m.get(3), bytes) or len(m[3]) > 64:
        return "malformed: birth boot id is not a byte string"
    if _moment(m.get(4)) is None:
        return "malformed: birth started is not a time"
    if _count(m.get(8)) is None:
        return "malformed: birth next seq is not a count"
    return ""


def _hex(x: Any) -> str | None:
    return x.hex() if isinstance(x, bytes) else None


def _modules(x: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if isinstance(x, list):
        for m in x[:32]:
            if isinstance(m, list | tuple) and len(m) == 3:
                out.append({"name": _text(m[0]), "version": _text(m[1]), "sha256": _hex(m[2])})
    return out


def _sensors(x: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if isinstance(x, list):
        for s in x[:MAX_SERIES]:
            if isinstance(s, dict):
                q = s.get("quantities")
                quantities = [_text(i) for i in q[:16]] if isinstance(q, list) else []
                out.append(
                    {
                        "id": _text(s.get("id")),
                        "driver": _text(s.get("driver")),
                        "quantities": [i for i in quantities if i is not None],
                        "interval": _num(s.get("interval"), 0.0, 1e7),
                    }
                )
    return out


def newest(records: list[dict[Any, Any]], per_quantity: int) -> list[dict[Any, Any]]:
    """A batch's records, at most the `per_quantity` newest of each quantity, in batch order."""
    times: dict[Any, list[float]] = {}
    for rec in records:
        times.setdefault(rec.get(payloads.N), []).append(_moment(rec.get(payloads.T)) or 0.0)
    floor: dict[Any, float] = {}
    for key, ts in times.items():
        if len(ts) > per_quantity:
            floor[key] = sorted(ts)[-per_quantity]
    if not floor:
        return records
    out: list[dict[Any, Any]] = []
    room = {key: per_quantity for key in floor}
    for rec in reversed(records):  # the newest are most often last: ties go to them
        key = rec.get(payloads.N)
        if key in floor:
            if room[key] == 0 or (_moment(rec.get(payloads.T)) or 0.0) < floor[key]:
                continue
            room[key] -= 1
        out.append(rec)
    out.reverse()
    return out


def plotted(records: list[dict[Any, Any]]) -> list[dict[Any, Any]]:
    """What of a batch's records the sparklines take: the quantities first named in it, at most
    as many as a gateway may show (2 * MAX_SERIES), each its newest readings, at most
    BATCH_READINGS of one and BATCH_TOTAL of all, in batch order."""
    keys: dict[Any, None] = {}
    for rec in records:
        key = rec.get(payloads.N)
        if key not in keys:
            if len(keys) >= 2 * MAX_SERIES:
                continue
            keys[key] = None
    share = max(1, min(BATCH_READINGS, BATCH_TOTAL // max(1, len(keys))))
    return newest([r for r in records if r.get(payloads.N) in keys], share)


class Fleet:
    """All gateways under one topic prefix.

    A gateway is shown once its own key signed a birth or a batch that verified on its own
    topic: anyone can publish, and only a signature says who spoke. Until then its unsigned
    messages wait in a bounded buffer (the broker hands retained status, state and health
    over before a birth as often as after it); at `max_devices`, a newly signed gateway
    takes the place of the one whose last signed message is the oldest."""

    def __init__(
        self,
        prefix: str = "depin/v1",
        *,
        window: float = WINDOW,
        points: int = POINTS,
        max_devices: int = MAX_DEVICES,
        max_series: int = MAX_SERIES,
        attestors: Iterable[str] = (),
    ) -> None:
        self.prefix = prefix.rstrip("/")
        self.window = window
        self.points = points
        self.max_devices = max_devices
        self.max_series = max_series
        # dids whose attestations count as verified; empty: none does (shown "not trusted")
        self.attestors = frozenset(attestors)
        self.devices: dict[str, Device] = {}
        self.ignored = 0  # messages not about a device
        # messages refused before or instead of use, by reason (shown on the page)
        self.refused: Counter[str] = Counter()
        self.evicted = 0  # gateways that made room for a newly signed one
        self.gone: set[str] = set()  # evicted since the server last took an update
        # device id -> kind -> (payload, arrival, retained), oldest device first
        self.pending: dict[str, dict[str, tuple[bytes, float, bool]]] = {}
        self.pending_bytes = 0
        self.recent: OrderedDict[bytes, None] = OrderedDict()  # digests of signed messages
        self.broker: dict[str, Any] = {"connected": False, "error": None, "since": None}
        self._broker_dirty = True

    # --- the broker connection ----------------------------------------------------------------

    def set_broker(self, connected: bool, error: str | None = None) -> None:
        if connected != self.broker["connected"] or error != self.broker["error"]:
            self.broker = {"connected": connected, "error": error, "since": time.time()}
            self._broker_dirty = True

    def topics(self) -> list[tuple[str, int]]:
        """What to subscribe to, with the QoS of each (spec section 8). Births first: the
        broker sends what it retains filter by filter, so a gateway's unsigned messages
        seldom wait for its signed one."""
        qos = {"state": 0, "health": 0}
        order = ("birth", "batch", *(k for k in KINDS if k not in ("birth", "batch")))
        return [(f"{self.prefix}/+/{kind}", qos.get(kind, 1)) for kind in order]

    # --- messages -----------------------------------------------------------------------------

    def handle(
        self, topic: str, payload: bytes, now: float | None = None, *, retained: bool = False
    ) -> str | None:
        """Take one message; the id of the device it changed, or None when ignored. `retained`:
        the broker kept it and sent it because the dashboard subscribed (it may be old)."""
        now = time.time() if now is None else now
        placed = self.place(topic, payload)
        if placed is None:
            return None
        return self.apply(*placed, payload, now, retained=retained)

    def place(self, topic: str, payload: bytes) -> tuple[str, str] | None:
        """The cheap checks, in this order: the (device id, kind) of a message to take, or None
        when it is refused (too big, repeated) or not about a device, counted."""
        if limits.too_big(topic, len(payload)):  # judged by its length, before anything else
            self.refused[f"{limits.kind_of(topic)[:16]}: too big"] += 1
            return None
        head = self.prefix + "/"
        parts = topic[len(head) :].split("/") if topic.startswith(head) else []
        if len(parts) != 2 or parts[1] not in KINDS or not DEVICE_ID.fullmatch(parts[0]):
            self.ignored += 1
            return None
        device_id, kind = parts
        if kind in SIGNED and payload and self._repeated(payload):
            self.refused[f"{kind}: repeated"] += 1
            return None
        return device_id, kind

    def apply(
        self,
        device_id: str,
        kind: str,
        payload: bytes,
        now: float,
        *,
        retained: bool = False,
        verdict: Verdict | None = None,
    ) -> str | None:
        """Take a message `place` let through; `verdict`: `judge`'s on a birth or batch, when
        it was judged elsewhere (the intake's worker thread)."""
        dev = self.devices.get(device_id)
        if dev is None:
            if not payload:
                self.ignored += 1  # an empty payload clears a retained topic: nothing to add
                self._hold(device_id, kind, payload, now, retained)
                return None
            if kind in UNSIGNED:
                self._hold(device_id, kind, payload, now, retained)
                return None
            if verdict is None:
                verdict = self._verdict(device_id, payload, kind)
            if verdict.problem:
                self.refused[f"{kind}: not signed by its device"] += 1
                return None
            dev = self._admit(device_id)
            for k, (p, t, r) in self.pending.pop(device_id, {}).items():
                self.pending_bytes -= len(p)
                self._take(dev, k, p, t, r, None)
        self._take(dev, kind, payload, now, retained, verdict)
        return device_id

    def _repeated(self, payload: bytes) -> bool:
        """Whether these bytes came lately; remembers them (the newest RECENT_MESSAGES)."""
        digest = hashlib.sha256(payload).digest()
        if digest in self.recent:
            self.recent.move_to_end(digest)
            return True
        self.recent[digest] = None
        if len(self.recent) > RECENT_MESSAGES:
            self.recent.popitem(last=False)
        return False

    def _stranger(self, dev: Device, kind: str, verdict: Verdict) -> bool:
        """Whether a message on the device's topic that does not count was not signed by the
        device's own key: then it is a stranger's (anyone can publish), counted in the intake
        and kept off the device's card."""
        v = verdict.found
        own = (
            (
                isinstance(v, Examined)
                or (isinstance(v, Finding) and v.batch_id is not None)  # the signature held
            )
            and v is not None
            and v.did is not None
            and device_id_of(v.did) == dev.id
        )
        if own:
            return False
        self.refused[f"{kind}: not signed by its device"] += 1
        return True

    def _take(
        self,
        dev: Device,
        kind: str,
        payload: bytes,
        now: float,
        retained: bool,
        verdict: Verdict | None,
    ) -> None:
        if kind in UNSIGNED:
            stamp = getattr(self, f"_on_{kind}")(dev, payload, now, retained)
        else:
            if verdict is None:
                verdict = self._verdict(dev.id, payload, kind)
            stamp = getattr(self, f"_on_{kind}")(dev, verdict, now)
            if not verdict.problem:
                dev.signed_t = now
        # An attestation is the attestor's word, an `offline` the broker's Last Will (or the
        # gateway's goodbye): neither says the gateway is there.
        if kind != "attestation" and not (kind == "status" and dev.status == "offline"):
            dev.heard(now, stamp, retained)
        dev.dirty = True

    def _hold(self, device_id: str, kind: str, payload: bytes, now: float, retained: bool) -> None:
        """Keep an unsigned message of a gateway not shown, the newest of each kind, until its
        signed birth or batch arrives; the oldest gateways' go first beyond the bounds."""
        held = self.pending.pop(device_id, {})
        old = held.pop(kind, None)
        if old is not None:
            self.pending_bytes -= len(old[0])
        if payload and kind in UNSIGNED:
            held[kind] = (payload, now, retained)
            self.pending_bytes += len(payload)
        if held:
            self.pending[device_id] = held  # now the newest
        while self.pending and (
            len(self.pending) > PENDING_DEVICES or self.pending_bytes > PENDING_BYTES
        ):
            oldest = next(iter(self.pending))
            for p, _, _ in self.pending.pop(oldest).values():
                self.pending_bytes -= len(p)
                self.refused["unsigned: device never signed"] += 1

    def _admit(self, device_id: str) -> Device:
        if len(self.devices) >= self.max_devices:
            stalest = min(self.devices.values(), key=lambda d: d.signed_t)
            del self.devices[stalest.id]
            self.gone.add(stalest.id)
            self.evicted += 1
        self.gone.discard(device_id)
        dev = self.devices[device_id] = Device(device_id)
        return dev

    # Each handler returns the gateway's own time of the message, when it has one.

    def _on_status(self, dev: Device, payload: bytes, now: float, retained: bool) -> None:
        text = payload.decode("ascii", "replace").strip()
        status = text if text in ("online", "offline") else None
        if status != dev.status or not retained:
            # a retained status may have been set any time before: its arrival says nothing
            dev.status_t = None if retained else now
        dev.status = status

    def _on_state(self, dev: Device, payload: bytes, now: float, retained: bool) -> float | None:
        doc = parse_json(payload)
        if doc is None:
            return None
        dev.name = _text(doc.get("name")) or dev.name
        dev.state_t = _moment(doc.get("updated"))
        sensors = doc.get("sensors")
        if not isinstance(sensors, dict):
            return dev.state_t
        for sid, quantities in list(sensors.items())[: self.max_series * 2]:
            if not isinstance(quantities, dict) or not isinstance(sid, str):
                continue
            for q, r in list(quantities.items())[: self.max_series * 2]:
                if isinstance(r, dict):
                    self._reading(
                        dev, f"{sid}/{q}", r.get("v"), r.get("u"), r.get("t"), r.get("as"),
                        r.get("af"), "state", now,
                    )  # fmt: skip
        return dev.state_t

    def _reading(
        self,
        dev: Device,
        key: str,
        v: Any,
        u: Any,
        t: Any,
        score: Any,
        flags: Any,
        src: str,
        now: float,
    ) -> None:
        tt, value = _moment(t), _num(v)
        if tt is None or len(key) > 2 * _TEXT:
            return
        af = _flags(flags)
        if value is None and not af:
            af = ["sensor-error"]  # a reading without a value always says why; be safe
        unit = _text(u, 16) or ""
        reading = {"v": value, "u": unit, "t": tt, "as": _num(score), "af": af, "src": src}
        old = dev.latest.get(key)
        if old is None and len(dev.latest) >= self.max_series * 2:
            return
        if old is None or tt >= old["t"]:
            dev.latest[key] = reading
        series = dev.series.get(key)
        if series is None and len(dev.series) < self.max_series:
            series = dev.series[key] = Series(unit, window=self.window, cap=self.points)
        if series is not None:
            series.add(tt, value, bool(af), now)
        if af and not any(a["key"] == key and a["t"] == tt for a in dev.anomalies):
            dev.anomalies.append({"key": key, **reading})

    def _on_health(self, dev: Device, payload: bytes, now: float, retained: bool) -> float | None:
        doc = parse_json(payload)
        if doc is None:
            return None
        health = fields.health(doc)
        stamp = health.get("t")
        # Intervals by the gateway's own clock, so the broker's and the network's delays do not
        # count; a gap across an outage is one of several and the median passes over it.
        if stamp is not None and dev.health_stamp is not None and stamp > dev.health_stamp:
            dev.health_gaps.append(stamp - dev.health_stamp)
        if stamp is not None:
            dev.health_stamp = stamp
        attestation = health.get("attestation")
        if attestation is not None:  # the page explains this score like a signed one's
            attestation["why"] = why_score(attestation)
        dev.health = health
        dev.health_t = now
        dev.name = health.get("name") or dev.name
        return stamp

    def _verdict(self, device_id: str, payload: bytes, kind: str) -> Verdict:
        return judge(self.prefix, device_id, kind, payload)

    def _on_birth(self, dev: Device, verdict: Verdict, now: float) -> None:
        if verdict.problem:  # what is shown stays what was signed
            if self._stranger(dev, "birth", verdict):
                return
            dev.rejected += 1
            dev.last_problem = f"birth: {verdict.problem}"
            return
        m = verdict.payload
        dev.birth = {
            "verified": True,
            "problem": None,
            "received": now,
            "version": _text(m.get(2)),
            "boot": _hex(m.get(3)),
            "started": _moment(m.get(4)),
            "config_sha256": _hex(m.get(5)),
            "sensors": _sensors(m.get(6)),
            "modules": _modules(m.get(7)),
            "next_seq": _count(m.get(8)),
        }

    def _on_batch(self, dev: Device, verdict: Verdict, now: float) -> float | None:
        v = verdict.found
        if verdict.problem or not isinstance(v, Examined):
            if self._stranger(dev, "batch", verdict):
                return None
            dev.rejected += 1
            dev.last_problem = verdict.problem or "not a batch"
            return None
        b = v.batch
        if v.batch_id in dev.batch_ids:  # the same batch again (in another envelope)
            self.refused["batch: repeated"] += 1
            return _moment(b.sealed)
        dev.batch_ids[v.batch_id] = None
        if len(dev.batch_ids) > RECENT_BATCHES:
            dev.batch_ids.popitem(last=False)
        dev.batches += 1
        if dev.batch_seq is None or b.seq > dev.batch_seq:
            dev.batch_seq = b.seq
            dev.batch_t = _moment(b.sealed)
        for rec in verdict.records:
            self._reading(
                dev, str(rec[payloads.N]), rec.get(payloads.V), rec[payloads.U],
                rec[payloads.T], rec.get(payloads.SCORE), rec.get(payloads.FLAGS), "batch", now,
            )  # fmt: skip
        return _moment(b.sealed)

    def _on_attestation(self, dev: Device, payload: bytes, now: float, retained: bool) -> None:
        # Not the gateway's own word: an attestation says nothing about when it was last heard.
        if not payload:
            dev.attestation = None
            return
        verdict = self._verdict(dev.id, payload, "attestation")
        problem, m = verdict.problem, verdict.payload
        about = m.get(2)
        if not problem and (not isinstance(about, str) or device_id_of(about) != dev.id):
            problem = "about another device"
        signer = verdict.found.did if verdict.found is not None else None
        signed = not problem
        if signed and signer not in self.attestors:
            problem = (
                "attestor not trusted (the dashboard trusts none: --attestor)"
                if not self.attestors
                else "attestor not trusted"
            )
        held = dev.attestation
        if problem and held is not None and held["verified"]:
            # an outsider's (or an untrusted attestor's) word does not hide a verified one
            self.refused[f"attestation: {problem}"[:80]] += 1
            return
        if signed and signer is not None:
            order = (_moment(m.get(3)) or 0.0, _count(m.get(11)) or 0)
            if signer in dev.attested and order <= dev.attested[signer]:
                self.refused["attestation: superseded"] += 1
                return
            dev.attested[signer] = order
        attestor = _text(m.get(1), 128)
        score = _num(m.get(9), 0.0, 1.0)
        status = _text(m.get(8))
        dev.attestation = {
            "verified": not problem,
            "signed": signed,
            "problem": problem or None,
            "received": now,
            "attestor": attestor,
            "epoch_start": _moment(m.get(3)),
            "epoch_end": _moment(m.get(4)),
            "expected": _count(m.get(5)),
            "verified_readings": _count(m.get(6)),
            "flagged": _count(m.get(7)),
            "status": status if status in CHAIN_FACTOR else None,
            "score": score,
            "root": _hex(m.get(10)),
        }
        dev.attestation["why"] = why_score(dev.attestation, "verified_readings")

    # --- what the server sends ----------------------------------------------------------------

    def take_update(self) -> dict[str, Any] | None:
        """What changed since the last call: device summaries and the sparkline points of the
        buckets that changed (each a whole bucket's point, to replace or insert)."""
        devices: list[dict[str, Any]] = []
        points: dict[str, dict[str, Any]] = {}
        for dev in self.devices.values():
            if not dev.dirty:
                continue
            dev.dirty = False
            devices.append(dev.summary())
            changed: dict[str, Any] = {}
            for key, s in dev.series.items():
                if s.dirty:
                    changed[key] = {"u": s.unit, "points": s.points(s.dirty)}
                    s.dirty = set()
            if changed:
                points[dev.id] = changed
        if not devices and not self._broker_dirty and not self.gone:
            return None
        self._broker_dirty = False
        gone, self.gone = sorted(self.gone), set()
        return {
            "broker": self.broker,
            "devices": devices,
            "points": points,
            "gone": gone,
            "intake": self.intake(),
        }

    def intake(self) -> dict[str, Any]:
        """What the dashboard refused or set aside, for the operator: messages refused by
        reason, gateways waiting for a signed message, gateways evicted, whom it trusts."""
        return {
            "refused": dict(sorted(self.refused.items())),
            "ignored": self.ignored,
            "pending": len(self.pending),
            "evicted": self.evicted,
            "attestors": sorted(self.attestors),
        }

    def snapshot(self, *, series: bool = True) -> dict[str, Any]:
        devices = []
        for dev in sorted(self.devices.values(), key=lambda d: (d.name or "", d.id)):
            doc = dev.summary()
            if series:
                doc["series"] = dev.series_json()
            devices.append(doc)
        return {
            "prefix": self.prefix,
            "window": self.window,
            "step": self.window / self.points,
            "points": self.points,
            "broker": self.broker,
            "devices": devices,
            "intake": self.intake(),
            "t": time.time(),
        }

    def detail(self, device_id: str) -> dict[str, Any] | None:
        dev = self.devices.get(device_id)
        if dev is None:
            return None
        return {**dev.summary(), "series": dev.series_json()}

    def prune(self, now: float | None = None) -> None:
        """Drop sparkline points that left the window (a quiet gateway's series age too; the
        page drops them by itself, so nothing is sent)."""
        now = time.time() if now is None else now
        for dev in self.devices.values():
            for s in dev.series.values():
                s.prune(now)


def dumps(doc: Mapping[str, Any]) -> str:
    """Compact JSON for the page; never NaN (the model keeps None for missing values)."""
    return json.dumps(doc, separators=(",", ":"), allow_nan=False)
