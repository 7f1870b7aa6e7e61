"""A module that raises or overruns its budget never stops the chain: its readings are flagged
`module-error`, health counts it, and the other modules' verdicts stand."""

from __future__ import annotations

import time
from collections.abc import Sequence

from gateway.core.health import Health
from gateway.core.reading import Reading
from gateway.modules import chain as chain_mod
from gateway.modules.base import DetectionModule, Verdict
from gateway.modules.chain import ModuleChain
from gateway.modules.ranges import RangeModule


class Crashing(DetectionModule):
    name = "crashing"
    version = "0.0.1"

    def judge(self, readings: Sequence[Reading]) -> Sequence[Verdict]:
        raise ZeroDivisionError("a bug in a third-party module")


class Slow(DetectionModule):
    name = "slow"
    version = "0.0.1"

    def judge(self, readings: Sequence[Reading]) -> Sequence[Verdict]:
        time.sleep(0.01)
        return [(0.9, ("model",)) for _ in readings]


def _readings(v: float = 21.0) -> list[Reading]:
    return [Reading("c", "temperature", "Cel", v, time.time(), True)]


def test_crashing_and_slow_modules_are_isolated() -> None:
    health = Health()
    chain = ModuleChain(
        [
            Crashing(module_id="bug", options={}),
            Slow(module_id="slow", options={}),
            RangeModule(module_id="physics", options={}),
        ],
        health=health,
        budgets=[0.02, 0.002, 0.02],
    )
    out = _readings(-99.0)  # out of range: the healthy module still says so
    chain.judge(out)
    r = out[0]
    assert "module-error" in r.flags and "range" in r.flags
    assert "model" not in r.flags  # the late verdict was not taken
    assert r.score == 1.0  # from the range module
    assert health.module_errors == {"bug": 1, "slow": 1}


def test_a_module_that_keeps_overrunning_sits_out() -> None:
    health = Health()
    chain = ModuleChain([Slow(module_id="slow", options={})], health=health, budgets=[0.002])
    for _ in range(chain_mod.OVERRUNS_BEFORE_QUARANTINE):
        chain.judge(_readings())
    assert health.module_errors["slow"] == chain_mod.OVERRUNS_BEFORE_QUARANTINE
    # Sitting out: no time spent in it, readings still flagged.
    t0 = time.perf_counter()
    for _ in range(20):
        out = _readings()
        chain.judge(out)
        assert out[0].flags == ["module-error"]
    assert time.perf_counter() - t0 < 0.01 * 20 / 2
