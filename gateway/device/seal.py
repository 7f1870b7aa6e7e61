"""Sealing one batch: its records built into the payload of spec section 3 and signed.

The step between the spool's queue and the chain. It decides nothing and stores nothing: the
spool chooses which records go into a batch, gives it its place in the chain (seq, prev), and
stores what comes back in the transaction that moves the chain forward. Every batch names the
modules that judged its records (key 8) and the process that sealed it (key 10).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from gateway.wire import cose, payloads
from gateway.wire.identity import Identity

#: how batch key 8 names a module: (name, version, sha256)
ModuleEntry = tuple[str, str, bytes]


class SealedBatch(NamedTuple):
    """A sealed batch, exactly as the spool stores it and the uplink publishes it."""

    seq: int
    message: bytes  # the signed COSE_Sign1
    n: int  # readings in it


@dataclass(frozen=True, slots=True)
class Signed:
    """One batch, sealed: its id (the next batch's `prev`) and the signed message."""

    batch_id: bytes
    message: bytes


class Seal:
    """Builds and signs batches under the device key, for this process (`boot`), naming the
    modules `modules()` returns at the moment of sealing."""

    def __init__(
        self,
        identity: Identity,
        *,
        boot: bytes,
        modules: Callable[[], Sequence[ModuleEntry]],
    ) -> None:
        self.identity = identity
        self.boot = boot
        self.modules = modules

    def __call__(
        self,
        *,
        seq: int,
        prev: bytes,
        sealed: float,
        records: Sequence[bytes],
        clock_synced: bool,
        clock_source: str,
        dropped: Sequence[payloads.DropReceipt] = (),
    ) -> Signed:
        payload, _root = payloads.encode_batch(
            did=self.identity.did,
            seq=seq,
            prev=prev,
            sealed=round(sealed, 3),
            records=records,
            clock_synced=clock_synced,
            clock_source=clock_source,
            modules=self.modules(),
            dropped=dropped,
            boot=self.boot,
        )
        message = cose.sign1(self.identity, cose.TYP_BATCH, payload)
        return Signed(hashlib.sha256(payload).digest(), message)
