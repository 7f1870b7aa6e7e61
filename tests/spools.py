"""Spools on real SQLite files for the tests, and what to fill them with: a device identity from
a seed, a spool with small batches opened at a path, records at fixed times, and a sealed
batch's message read back."""

from __future__ import annotations

from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.device.spool import PendingRecord, Spool
from gateway.wire import cose, payloads
from gateway.wire.identity import Identity

#: when the records of `recs` were taken (one a second from here)
T0 = 1_764_000_000.0


def ident(seed: int = 7) -> Identity:
    return Identity.from_private_key(Ed25519PrivateKey.from_private_bytes(bytes([seed]) * 32))


def make_spool(path: Path, **kw: object) -> Spool:
    args: dict[str, object] = dict(
        identity=ident(),
        boot=b"B" * 16,
        max_size=64 << 20,
        batch_max_readings=10,
        batch_max_age=60.0,
        seal_ahead=4,
        modules=lambda: [("ranges", "1.0.0", b"\0" * 32)],
    )
    args.update(kw)
    s = Spool(path, **args)  # type: ignore[arg-type]
    s.open()
    return s


def recs(n: int, start: int = 0, synced: bool = True) -> list[PendingRecord]:
    return [
        PendingRecord(
            T0 + i,
            synced,
            "ntp" if synced else "none",
            payloads.encode_record("c/temperature", "Cel", 20 + i / 100, T0 + i, 0.0, ()),
        )
        for i in range(start, start + n)
    ]


def decode(message: bytes) -> payloads.Batch:
    return payloads.decode_batch(cose.verify1(message).payload)
