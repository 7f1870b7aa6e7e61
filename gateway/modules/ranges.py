"""Physical range per quantity: a value no sensor of that kind can report is certainly wrong.

The limits are the chips' measuring ranges as the drivers' manifests state them (the widest of
the chips reporting a quantity: gateway/modules/chips.py), unless configured.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from gateway.core.fields import Field
from gateway.core.manifest import Manifest
from gateway.core.reading import Reading
from gateway.modules.base import NO_OPINION, DetectionModule, Verdict
from gateway.modules.chips import chip_facts

_RANGE: Verdict = (1.0, ("range",))


def _check_ranges(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "expected a table like { temperature = [-40, 85] }"
    for q, lim in value.items():
        if (
            not isinstance(lim, list)
            or len(lim) != 2
            or not all(isinstance(x, int | float) and not isinstance(x, bool) for x in lim)
            or lim[0] >= lim[1]
        ):
            return f"{q}: expected [low, high] with low < high"
    return None


class RangeModule(DetectionModule):
    name = "ranges"
    version = "1.0.0"
    USES_CHIP_FACTS = True
    CONFIG: ClassVar[Mapping[str, Field]] = {
        "ranges": Field(
            "table",
            "per-quantity [low, high] limits that replace the built-in ones",
            default={},
            check=_check_ranges,
        ),
    }

    def __init__(self, *, module_id: str, options: Mapping[str, Any]) -> None:
        super().__init__(module_id=module_id, options=options)
        self.limits = dict(chip_facts().range)
        for q, (lo, hi) in dict(options.get("ranges") or {}).items():
            self.limits[q] = (float(lo), float(hi))

    def judge(self, readings: Sequence[Reading]) -> Sequence[Verdict]:
        limits = self.limits
        out: list[Verdict] = []
        for r in readings:
            lim = limits.get(r.quantity)
            v = r.value
            if lim is None or v is None or lim[0] <= v <= lim[1]:
                out.append(NO_OPINION)
            else:
                out.append(_RANGE)
        return out


MANIFEST = Manifest(
    name="ranges",
    kind="module",
    factory=RangeModule,
    sample="ranges.sample.toml",
    readme="../../docs/modules/ranges.md",
)
