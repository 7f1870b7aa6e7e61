"""The module chain: every configured module judges every reading it declares interest in.

A reading's score is the highest score any module gave it, and its flags are the union. A module
that raises never stops the pipeline: its readings get the `module-error` flag and health counts
the failure.

Shadow modules (models on trial, `gateway.models.store`) judge the same readings after the
chain, but their verdicts only go to health: they never touch a reading, and the batches do not
name them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.config.settings import ModuleConfig
from gateway.core import plugins
from gateway.core.health import Health
from gateway.core.reading import Reading
from gateway.modules.base import DetectionModule

log = logging.getLogger("gateway.modules")


@dataclass(frozen=True)
class ModuleInfo:
    module_id: str
    name: str
    version: str
    digest: bytes


#: after this many calls in a row over budget a module sits out for QUARANTINE seconds, so one
#: slow module cannot keep slowing every sensor down
OVERRUNS_BEFORE_QUARANTINE = 5
QUARANTINE = 60.0


class ModuleChain:
    def __init__(
        self,
        modules: Sequence[DetectionModule],
        *,
        health: Health,
        budgets: Sequence[float] | None = None,
    ) -> None:
        self.modules = list(modules)
        self.health = health
        self.budgets = list(budgets) if budgets is not None else [0.02] * len(self.modules)
        self.info = [ModuleInfo(m.module_id, m.name, m.version, m.digest()) for m in self.modules]
        self._overruns = [0] * len(self.modules)
        self._sitting_out_until = [0.0] * len(self.modules)
        self.shadows: dict[str, DetectionModule] = {}

    @classmethod
    def from_config(cls, configs: Sequence[ModuleConfig], *, health: Health) -> ModuleChain:
        mods: list[DetectionModule] = []
        for mc in configs:
            klass = plugins.module_class(mc.kind)
            mods.append(klass(module_id=mc.id, options=mc.options))
        return cls(mods, health=health, budgets=[mc.budget for mc in configs])

    def batch_entries(self) -> list[tuple[str, str, bytes]]:
        """Batch key 8 / birth key 7: [name, version, sha256]."""
        return [(i.name, i.version, i.digest) for i in self.info]

    def swap(self, index: int, module: DetectionModule) -> None:
        """Run `module` in place of module `index` from the next reading on."""
        self.modules[index] = module
        m = module
        self.info[index] = ModuleInfo(m.module_id, m.name, m.version, m.digest())
        self._overruns[index] = 0
        self._sitting_out_until[index] = 0.0

    def judge(self, readings: Sequence[Reading]) -> None:
        for i, mod in enumerate(self.modules):
            wanted = mod.quantities
            subset = readings if wanted is None else [r for r in readings if r.quantity in wanted]
            if not subset:
                continue
            start = time.perf_counter()
            if start < self._sitting_out_until[i]:
                _error(subset)
                continue
            try:
                verdicts = mod.judge(subset)
                if len(verdicts) != len(subset):
                    raise ValueError(f"returned {len(verdicts)} verdicts for {len(subset)}")
            except Exception as e:  # a module's failure must never stop the pipeline
                self.health.module_error(mod.module_id)
                log.warning("module %s failed: %s", mod.module_id, e)
                _error(subset)
                continue
            took = time.perf_counter() - start
            if took > self.budgets[i]:
                # Late verdicts are not trusted either: the module may be starved or stuck.
                self.health.module_error(mod.module_id)
                self._overruns[i] += 1
                if self._overruns[i] >= OVERRUNS_BEFORE_QUARANTINE:
                    self._sitting_out_until[i] = time.perf_counter() + QUARANTINE
                    self._overruns[i] = 0
                    log.warning(
                        "module %s overran its %.1f ms budget %d times in a row: it sits out "
                        "for %.0f s",
                        mod.module_id,
                        self.budgets[i] * 1e3,
                        OVERRUNS_BEFORE_QUARANTINE,
                        QUARANTINE,
                    )
                _error(subset)
                continue
            self._overruns[i] = 0
            for r, (score, flags) in zip(subset, verdicts, strict=True):
                if score > r.score:
                    r.score = min(1.0, float(score))
                for f in flags:
                    if f not in r.flags:
                        r.flags.append(f)
        for r in readings:
            if r.score > 0 or r.flags:
                self.health.flagged += 1
        for name, shadow in self.shadows.items():
            self._shadow(name, shadow, readings)

    def _shadow(self, name: str, mod: DetectionModule, readings: Sequence[Reading]) -> None:
        wanted = mod.quantities
        subset = [r for r in readings if wanted is None or r.quantity in wanted]
        if not subset:
            return
        stats = self.health.shadow_stats(name)
        try:
            verdicts = mod.judge(subset)
            if len(verdicts) != len(subset):
                raise ValueError(f"returned {len(verdicts)} verdicts for {len(subset)}")
        except Exception as e:  # a model on trial must not disturb the chain either
            stats["errors"] += 1
            log.debug("shadow model %s failed: %s", name, e)
            return
        for r, (score, flags) in zip(subset, verdicts, strict=True):
            if r.value is None:
                continue
            if not math.isfinite(score):  # a model on trial may divide by zero
                stats["errors"] += 1
                continue
            stats["judged"] += 1
            stats["score_sum"] += float(score)
            # Compared with the active models' flag on the same reading: where they disagree
            # is what an operator wants to see before promoting.
            mine, active = bool(flags), "model" in r.flags
            stats["flagged"] += mine
            if mine or active:
                stats["both" if mine and active else "only_shadow" if mine else "only_active"] += 1


def _error(readings: Sequence[Reading]) -> None:
    for r in readings:
        if "module-error" not in r.flags:
            r.flags.append("module-error")
