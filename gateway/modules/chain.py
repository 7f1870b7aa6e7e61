"""The module chain: every configured module judges every reading it declares interest in.

A reading's score is the highest score any module gave it, and its flags are the union. A module
that raises never stops the pipeline: its readings get the `module-error` flag and health counts
the failure.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from gateway import plugins
from gateway.config import ModuleConfig
from gateway.health import Health
from gateway.modules.base import DetectionModule
from gateway.reading import Reading

log = logging.getLogger("gateway.modules")


@dataclass(frozen=True)
class ModuleInfo:
    module_id: str
    name: str
    version: str
    digest: bytes


class ModuleChain:
    def __init__(self, modules: Sequence[DetectionModule], *, health: Health) -> None:
        self.modules = list(modules)
        self.health = health
        self.info = [ModuleInfo(m.module_id, m.name, m.version, m.digest()) for m in self.modules]

    @classmethod
    def from_config(cls, configs: Sequence[ModuleConfig], *, health: Health) -> ModuleChain:
        mods: list[DetectionModule] = []
        for mc in configs:
            klass = plugins.module_class(mc.kind)
            mods.append(klass(module_id=mc.id, options=mc.options))
        return cls(mods, health=health)

    def batch_entries(self) -> list[tuple[str, str, bytes]]:
        """Batch key 8 / birth key 7: [name, version, sha256]."""
        return [(i.name, i.version, i.digest) for i in self.info]

    def judge(self, readings: Sequence[Reading]) -> None:
        for mod in self.modules:
            wanted = mod.quantities
            subset = readings if wanted is None else [r for r in readings if r.quantity in wanted]
            if not subset:
                continue
            try:
                verdicts = mod.judge(subset)
                if len(verdicts) != len(subset):
                    raise ValueError(f"returned {len(verdicts)} verdicts for {len(subset)}")
            except Exception as e:  # a module's failure must never stop the pipeline
                self.health.module_error(mod.module_id)
                log.warning("module %s failed: %s", mod.module_id, e)
                for r in subset:
                    if "module-error" not in r.flags:
                        r.flags.append("module-error")
                continue
            for r, (score, flags) in zip(subset, verdicts, strict=True):
                if score > r.score:
                    r.score = min(1.0, float(score))
                for f in flags:
                    if f not in r.flags:
                        r.flags.append(f)
        for r in readings:
            if r.score > 0 or r.flags:
                self.health.flagged += 1
