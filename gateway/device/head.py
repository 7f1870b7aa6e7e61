"""The chain head the broker keeps: where this device's chain stands, off the device.

The chain record beside the spool (`highwater`) stops a gateway from signing a seq twice when
the spool goes back in time. It cannot help when the record goes with it: the whole state
directory lost or replaced by a fresh image, the spool and its record restored together from a
backup, a second copy of the key running elsewhere. So the gateway also keeps its position on
the broker, in a small signed message (spec section 5.1), published retained before the batches
it covers on the same connection: whatever batch a verifier has seen, the broker holds a head
at least as far. At every start the gateway seals nothing until it has read that head back
once, and takes its chain up after it when the broker has seen further than the spool
(`Spool.anchor`). A head signed under this key in another process, for a seq this process may
sign too, means another gateway runs with this key: the gateway stops before it signs again.

Only our own key can sign a head, so nobody else on the broker can move a gateway's chain; an
old head replayed there names a seq below the one the gateway continues from, and changes
nothing.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.wire import cose, dcbor, limits, strict
from gateway.wire.identity import Identity

#: A head is about 280 bytes; anything much larger on the topic is not one, and is not decoded.
MAX_HEAD_BYTES = limits.CAPS["head"]
#: How long the gateway waits for its own message on the head topic to come back, behind the
#: retained head (if any); without it, the connection is tried again, still sealing nothing.
WAIT = 10.0
_TYPS = frozenset({cose.TYP_HEAD})


@dataclass(frozen=True, slots=True)
class Head:
    seq: int  # the last batch sealed
    batch: bytes  # its batch id
    taken: int  # readings that left the spool's queue up to it, chain-wide
    boot: bytes  # the process that published it (as batch key 10)
    spool: str  # the spool it was sealed in (its id)


def encode(did: str, head: Head) -> bytes:
    return dcbor.dumps(
        {1: did, 2: head.seq, 3: head.batch, 4: head.taken, 5: head.boot, 6: head.spool}
    )


def sign(identity: Identity, head: Head) -> bytes:
    return cose.sign1(identity, cose.TYP_HEAD, encode(identity.did, head))


def read(message: bytes, identity: Identity) -> Head | None:
    """The head in `message` if it is one signed by this device's key; None for anything else
    (judged by size before any decoding; never raises)."""
    try:
        return _read(message, identity)
    except Exception:  # whatever else is on the topic is not our head
        return None


def _read(message: bytes, identity: Identity) -> Head | None:
    if len(message) > MAX_HEAD_BYTES:
        return None
    s = cose.verify1(message, _TYPS)  # raises on anything not signed under the head's typ
    if s.kid != identity.kid:
        return None
    # Signed by this device's key, yet read like any stranger's bytes: a copy of the key
    # elsewhere, or an older release, must not be able to make this reader hold more.
    m = strict.loads(s.payload, deterministic=True)
    if not isinstance(m, dict) or set(m) != {1, 2, 3, 4, 5, 6} or m[1] != identity.did:
        return None
    seq, batch, taken, boot, spool = m[2], m[3], m[4], m[5], m[6]
    if not (type(seq) is int and 0 <= seq < 2**64 and type(taken) is int and 0 <= taken < 2**64):
        return None
    if not (isinstance(batch, bytes) and len(batch) == 32 and isinstance(boot, bytes)):
        return None
    if len(boot) != 16 or not isinstance(spool, str) or len(spool) > 64:
        return None
    return Head(seq, batch, taken, boot, spool)


class _Spool(Protocol):
    position: tuple[int, bytes, int] | None

    @property
    def spool_id(self) -> str: ...

    @property
    def next_seq(self) -> int: ...

    def anchor(self, head: Head | None) -> bool: ...


class Keeper:
    """The daemon's side of the chain head, as the uplink uses it (`uplink.ChainHead`)."""

    def __init__(
        self,
        identity: Identity,
        *,
        boot: bytes,
        spool: _Spool,
        in_spool: Callable[[Callable[[], bool]], Awaitable[bool]],
        anchored: Callable[[], Awaitable[object]],
    ) -> None:
        self.identity = identity
        self.boot = boot
        self.spool = spool
        self._in_spool = in_spool
        self._anchored = anchored
        self._for: tuple[int, bytes, int] | None = None
        self._signed: tuple[int, bytes] | None = None

    def current(self) -> tuple[int, bytes] | None:
        pos = self.spool.position  # one read: the spool's thread replaces it whole
        if pos is None:
            return None
        if self._signed is None or self._for != pos:
            seq, batch, taken = pos
            found = Head(seq, batch, taken, self.boot, self.spool.spool_id)
            self._for, self._signed = pos, (seq, sign(self.identity, found))
        return self._signed

    def read(self, message: bytes) -> Head | None:
        return read(message, self.identity)

    async def anchor(self, found: Head | None) -> int:
        spool = self.spool
        await self._in_spool(lambda: spool.anchor(found))
        await self._anchored()
        return spool.next_seq
