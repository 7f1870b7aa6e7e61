"""Models on the reading's way: the judge's chain built with the installed model updates, and the
bundles that arrive on the model topic run in place of a model module's model, or beside the
chain on trial (shadow mode). The store's policy is `gateway.models.store`'s.

Model modules are reached through `gateway.modules.model_backed` and the plug-in registry alone.
Loading a model is blocking work: it runs in a worker thread, never on the event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from gateway.config.settings import Config, ModuleConfig
from gateway.core import plugins
from gateway.core.health import Health
from gateway.device.judge import Judge, ModuleSwitch
from gateway.device.service import Broker
from gateway.models.store import MODULE_KIND, Installed, ModelStore, Outcome
from gateway.modules.base import DetectionModule
from gateway.modules.chain import ModuleChain
from gateway.modules.model_backed import model_backed, model_class

if TYPE_CHECKING:
    from gateway.modules.model_backed import ModelModule

log = logging.getLogger("gateway")

#: Refusals of what anyone on the broker can publish (junk, a stranger's signature, a trusted
#: bundle replayed where or when it was not meant): counted as ignored messages too. A model the
#: interpreter refuses came from the operator as meant, and is a model update that failed.
FROM_ANYONE = frozenset(
    {"malformed", "bad-signature", "untrusted-signer", "old-format", "not-for-this-device", "stale"}
)


class Chains:
    """Module chains of a configuration: each model module runs its model's installed update
    where there is one, and the installed models on trial judge beside the chain."""

    def __init__(self, store: ModelStore, *, health: Health) -> None:
        self.store = store
        self.health = health

    @classmethod
    def of(cls, cfg: Config, *, health: Health) -> Chains:
        """With the updates installed under `[models] dir` (default: beside the spool)."""
        models = cfg.models
        store = ModelStore(
            models.dir or cfg.spool.path.parent / "models",
            models.trusted_model_signers,
            fleet=models.fleet,
        )
        store.load()
        return cls(store, health=health)

    def build(self, configs: Sequence[ModuleConfig]) -> ModuleChain:
        """The chain of `configs`, its shadows with it. Blocking (models load); touches no
        health figures: `adopt` does, once the chain runs."""
        resolved = []
        for mc in configs:
            klass = model_class(plugins.module_class(mc.kind))
            if klass is not None:
                inst = self.store.installed["active"].get(klass.configured_model(mc.options))
                if inst is not None:
                    opts = klass.options_for(mc.options, inst.manifest)
                    mc = dataclasses.replace(mc, options=MappingProxyType(opts))
            resolved.append(mc)
        chain = ModuleChain.from_config(resolved, health=self.health)
        for inst in self.store.installed["shadow"].values():
            chain.shadows[inst.name] = self.shadow(chain, inst)
        return chain

    def adopt(self, chain: ModuleChain) -> None:
        """Health's figures for `chain`, which judges from now on. On the event loop's thread,
        where the chain updates them."""
        for inst in self.store.installed["shadow"].values():
            if inst.name in chain.shadows:
                self.start_shadow(chain, inst, chain.shadows[inst.name])
        self.note(chain)

    def start_shadow(self, chain: ModuleChain, inst: Installed, module: DetectionModule) -> None:
        """Run `module` in shadow mode from the next reading, with fresh figures in health."""
        chain.shadows[inst.name] = module
        if self.health.shadow.get(inst.name, {}).get("sha256") != inst.sha256:
            # A new trial starts its figures afresh; the same one (a SIGHUP) keeps counting.
            self.health.shadow.pop(inst.name, None)
        self.health.shadow_stats(inst.name).update(version=inst.version, sha256=inst.sha256)

    def shadow(self, chain: ModuleChain, inst: Installed) -> ModelModule:
        """The module that runs `inst` on trial (blocking: it loads the model). Judged like the
        active model of that name would be: the same module's options."""
        module_id = f"shadow:{inst.name}"
        for _, active in running(chain, inst.name):
            return active.with_manifest(inst.manifest, module_id=module_id)
        return self.load(inst.manifest, module_id=module_id)

    def load(self, manifest: Path, *, module_id: str) -> ModelModule:
        """A module of the kind that runs bundles' models, with the model of `manifest` and
        otherwise its defaults (blocking)."""
        klass = model_class(plugins.module_class(MODULE_KIND))
        if klass is None:
            raise TypeError(f"module kind {MODULE_KIND!r} does not run model updates")
        return klass(module_id=module_id, options=klass.options_for({}, manifest))

    def trial(self, manifest: Path) -> None:
        """Load the model of `manifest` the way the chain would: raises if it is refused."""
        self.load(manifest, module_id="trial")

    def note(self, chain: ModuleChain) -> None:
        """Health's `models` (what each model module runs, and from where) and `shadow`."""
        models: dict[str, dict[str, Any]] = {}
        for m in chain.modules:
            module = model_backed(m)
            if module is None:
                continue
            model = module.model()
            inst = self.store.installed["active"].get(model.name)
            entry = models.setdefault(
                model.name,
                {
                    "version": model.version,
                    "sha256": model.sha256,
                    "source": "update" if inst and inst.sha256 == model.sha256 else "config",
                    "modules": [],
                },
            )
            entry["modules"].append(module.module_id)
        self.health.models = models
        for name in list(self.health.shadow):
            if name not in chain.shadows:
                del self.health.shadow[name]


def running(chain: ModuleChain, name: str) -> list[tuple[int, ModelModule]]:
    """(index, module) of every model module in `chain` that runs the model `name`."""
    found = []
    for i, m in enumerate(chain.modules):
        module = model_backed(m)
        if module is not None and module.model().name == name:
            found.append((i, module))
    return found


class ModelService:
    """Model bundles on the model topic: checked, tried and installed by the store (in a
    thread), then run; the outcome goes back on `model/result`."""

    def __init__(
        self,
        chains: Chains,
        *,
        judge: Judge,
        switch: ModuleSwitch,
        broker: Broker,
        health: Health,
    ) -> None:
        self.store = chains.store
        self.chains = chains
        self.judge = judge
        self.switch = switch
        self.broker = broker
        self.health = health
        # The device this gateway is: its model topic is `<prefix>/<device id>/model`, and the
        # prefix may hold slashes of its own.
        self.device_id = broker.topics["model"].rsplit("/", 2)[-2]

    async def receive(self, topic: str, payload: bytes) -> None:
        """A message on the model topic (the uplink refused it unread if over the model cap)."""
        if payload:  # an empty retained message clears the topic; it is not a bundle
            result = await self.update(payload)
            await self.broker.publish(
                self.broker.topics["model/result"], result, qos=1, retain=True
            )

    async def update(self, data: bytes) -> bytes:
        """A bundle arrived on the model topic: the outcome, as published on model/result."""
        async with self.switch.changing:
            try:
                outcome, inst = await asyncio.to_thread(
                    self.store.receive, data, self.chains.trial, device_id=self.device_id
                )
                if inst is None and outcome.result == "unchanged" and outcome.mode == "active":
                    # Installed before but not switched in (the broker was behind then).
                    inst = self.store.installed["active"].get(outcome.name)
                    now = self.health.models.get(outcome.name, {}).get("sha256")
                    if inst is None or now in (None, inst.sha256):
                        inst = None
                if inst is not None:
                    outcome = await self._run(inst, outcome)
            except Exception as e:  # whatever happens, the running chain stays as it was
                log.exception("model update failed")
                outcome = Outcome("rejected", f"failed: {e}", "error", at=time.time())
            self.health.model_updates[outcome.result] += 1
            if outcome.kind in FROM_ANYONE:
                self.health.ignored_messages["model"] += 1
            self.health.last_model_update = outcome.to_dict()
            if outcome.result == "rejected":
                log.warning("model update rejected (%s): %s", outcome.kind, outcome.reason)
            else:
                log.info("model update %s: %s", outcome.result, outcome.reason)
            return outcome.to_json()

    async def _run(self, inst: Installed, outcome: Outcome) -> Outcome:
        chain = self.judge.chain
        active = running(chain, inst.name)
        if inst.mode == "shadow":
            shadow = await asyncio.to_thread(self.chains.shadow, chain, inst)
            if active:
                # A copy of the active model's windows: the shadow judges from the next reading
                # on, and the two never write into one ring.
                shadow.take_windows(active[0][1], copy=True)
            self.chains.start_shadow(chain, inst, shadow)
            return outcome

        def build() -> list[ModelModule]:
            return [old.with_manifest(inst.manifest) for _, old in active]

        modules = await asyncio.to_thread(build)
        if not active:
            return dataclasses.replace(
                outcome,
                reason=f"{outcome.reason}; no [[module]] of kind {MODULE_KIND} runs a model "
                f"named {inst.name!r} yet",
            )

        def swap(new: Sequence[DetectionModule]) -> None:
            for (i, _), module in zip(active, new, strict=True):
                chain.swap(i, module)

        for (_, old), module in zip(active, modules, strict=True):
            module.take_windows(old, copy=False)  # no warm-up for the new model
        if not await self.switch(lambda: swap(modules), lambda: swap([m for _, m in active])):
            return dataclasses.replace(
                outcome,
                reason=f"{outcome.reason}, installed; it runs from the next start, or resend the "
                "bundle once the broker has caught up (the readings judged so far could not be "
                "sealed now)",
            )
        chain.shadows.pop(inst.name, None)
        self.chains.note(chain)
        self.broker.announce()
        return outcome
