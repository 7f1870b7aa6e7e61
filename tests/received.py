"""What arrived at the broker, reading by reading: to check that nothing durable was lost and
nothing was signed into two batches."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from gateway.wire import payloads
from tests.collector import Collector, unique_batches


def received_readings(
    batches: list[tuple[int, bytes, payloads.Batch]],
) -> Counter[tuple[str, float]]:
    """(name, time) of every reading in `batches` (as `unique_batches` gives them), with the
    number of times it came."""
    return Counter((r[payloads.N], float(r[payloads.T])) for _, _, b in batches for r in b.records)


def all_arrived(collector: Collector, durable: Iterable[tuple[str, float]]) -> bool:
    """Is every reading of `durable` (as `GatewayProcess.durable` gives them) in a batch the
    collector holds?"""
    got = received_readings(unique_batches(collector.batches()))
    return all(d in got for d in durable)
