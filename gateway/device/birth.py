"""The birth message: who this gateway is, what it runs and where its chain goes on (spec
section 3.2), signed, and published retained by the uplink on every connect and whenever the
modules change."""

from __future__ import annotations

import hashlib
import json
import time

from gateway import __version__
from gateway.config.settings import Config
from gateway.device.judge import Judge
from gateway.device.reload import InEffect
from gateway.device.sampler import Sampler
from gateway.device.spool_service import SpoolService
from gateway.wire import cose, payloads
from gateway.wire.identity import Identity


def config_digest(cfg: Config) -> bytes:
    return hashlib.sha256(json.dumps(cfg.to_dict(), sort_keys=True).encode()).digest()


class Birth:
    """The uplink's `birth` callback: the message as of now (the sensors' quantities once they
    answered, the modules running, the next seq)."""

    def __init__(
        self,
        config: InEffect,
        *,
        identity: Identity,
        boot: bytes,
        sampler: Sampler,
        judge: Judge,
        spool: SpoolService,
    ) -> None:
        self.identity = identity
        self.boot = boot
        self.started = time.time()
        self.config = config
        self.sampler = sampler
        self.judge = judge
        self.spool = spool

    async def __call__(self) -> bytes:
        next_seq = await self.spool.call(self.spool.spool.first_unacked_seq)
        payload = payloads.encode_birth(
            did=self.identity.did,
            version=__version__,
            boot=self.boot,
            started=round(self.started, 3),
            config_sha256=config_digest(self.config.cfg),
            sensors=[
                {
                    "id": s.cfg.id,
                    "driver": s.cfg.driver,
                    "quantities": list(s.units),
                    "interval": s.cfg.interval,
                }
                for s in self.sampler.sensors
            ],
            modules=self.judge.chain.batch_entries(),
            next_seq=next_seq,
        )
        return cose.sign1(self.identity, cose.TYP_BIRTH, payload)
