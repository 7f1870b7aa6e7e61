"""The chips' facts the rule modules judge readings by: per quantity, its resolution and range,
as the registered drivers state them in their manifests (drivers/manifests.py for the built-in
chips). Read through the registry; no driver's code is imported for them.

A series does not say which chip made it, so the facts are per quantity, over every registered
driver that states them:

- resolution: the finest. A coarser chip's steps are whole multiples of it, so its repeats stay
  repeats and its steps stay steps; the coarser one would make a fine chip's real changes look
  like repeats.
- range: the widest. A value is out of range only when no chip of that kind can report it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import cache

from gateway.core import plugins

log = logging.getLogger(__name__)


class ChipFacts:
    """Quantity -> the finest resolution / the widest range any registered driver states."""

    __slots__ = ("range", "resolution")  # a plain class: a dataclass costs every start ~1 ms

    def __init__(
        self, resolution: Mapping[str, float], span: Mapping[str, tuple[float, float]]
    ) -> None:
        self.resolution = resolution
        self.range = span

    def digest(self) -> bytes:
        """SHA-256 of both tables, canonically: a module judging by them names them in its
        digest (batch key 8), since another installed driver can change them."""
        import hashlib
        import json

        text = json.dumps(
            {"resolution": dict(self.resolution), "range": dict(self.range)}, sort_keys=True
        )
        return hashlib.sha256(text.encode()).digest()


def chip_facts() -> ChipFacts:
    """The facts of the drivers registered now (computed once per set of entry points)."""
    return _facts(tuple(plugins.entries(plugins.DRIVER_GROUP).items()))


@cache
def _facts(entries: tuple[tuple[str, str], ...]) -> ChipFacts:
    resolution: dict[str, float] = {}
    span: dict[str, tuple[float, float]] = {}
    for name, _ in entries:
        try:
            manifest = plugins.driver(name)
        except Exception as exc:  # a broken plug-in must not stop the modules judging the rest
            log.warning(
                "driver %s: its manifest did not load (%s: %s); its quantities' resolution and "
                "range are not known to the modules",
                name,
                type(exc).__name__,
                exc,
            )
            continue
        for quantity, fact in manifest.quantities.items():
            if fact.resolution is not None:
                resolution[quantity] = min(
                    resolution.get(quantity, fact.resolution), fact.resolution
                )
            if fact.range is not None:
                low, high = span.get(quantity, fact.range)
                span[quantity] = (min(low, fact.range[0]), max(high, fact.range[1]))
    return ChipFacts(resolution, span)
