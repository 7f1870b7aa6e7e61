"""SIGHUP: the `[[module]]` tables of the configuration file taken as they are now, without a
restart. The sensors go on reading throughout; the readings judged so far are sealed under the
modules that judged them (`ModuleSwitch`)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from gateway.config import settings as config
from gateway.config.settings import Config
from gateway.core.errors import ConfigError
from gateway.core.health import Health
from gateway.device.judge import ModuleSwitch
from gateway.device.model_service import Chains
from gateway.device.service import Broker, Plain

log = logging.getLogger("gateway")

#: the sections a reload leaves for the next start
_AT_START = ("device", "spool", "uplink", "clock", "log", "models", "monitor", "sensors")


@dataclasses.dataclass
class InEffect:
    """The configuration in effect: the one the gateway started with, its modules as the last
    reload took them (the birth message names its digest)."""

    cfg: Config


class Reload(Plain):
    """Takes the modules of the configuration file on each request (SIGHUP), one after the
    other."""

    def __init__(
        self,
        config_in_effect: InEffect,
        *,
        chains: Chains,
        switch: ModuleSwitch,
        broker: Broker,
        health: Health,
    ) -> None:
        self.config = config_in_effect
        self.chains = chains
        self.switch = switch
        self.broker = broker
        self.health = health
        self._requests: asyncio.Queue[None] = asyncio.Queue()

    def request(self) -> None:
        """A reload, as soon as the ones asked for before are done (the SIGHUP handler)."""
        self._requests.put_nowait(None)

    async def run(self) -> None:
        while True:
            await self._requests.get()
            try:
                await self.reload()
            except Exception:  # the gateway goes on with the modules it has
                log.exception("reload failed")

    async def reload(self) -> bool:
        """Other sections take effect at the next start. A broken file changes nothing.
        Returns whether the chain changed."""
        async with self.switch.changing:
            cfg = self.config.cfg
            source = cfg.source
            if source is None:
                log.warning("reload: the configuration did not come from a file")
                return False
            try:
                new_cfg = await asyncio.to_thread(config.load, source)
                changed = [n for n in _AT_START if getattr(new_cfg, n) != getattr(cfg, n)]
                if changed:
                    log.warning("reload: changes to %s take effect at the next start", changed)
                if new_cfg.modules == cfg.modules:  # nothing to build (models load slowly)
                    log.info("reload: modules unchanged")
                    return False
                chain = await asyncio.to_thread(self.chains.build, new_cfg.modules)
            except ConfigError as e:
                for problem in e.problems:
                    log.error("reload refused: %s", problem)
                return False
            except Exception as e:  # a module that cannot start must not take the old chain
                log.error("reload refused: a module failed to start: %s", e)
                return False
            if not await self.switch.use(chain):
                return False
            self.chains.adopt(chain)
            self.config.cfg = dataclasses.replace(cfg, modules=new_cfg.modules)
            self.health.reloads += 1
            log.info(
                "reload: modules now %s",
                ", ".join(f"{i.module_id} ({i.name} {i.version})" for i in chain.info) or "none",
            )
            self.broker.announce()
            return True
