"""The sample configuration's whole module set on the demo's sensors: the faults a simulated
sensor injects are flagged, and no correct reading is (not the good reading after an injected
fault, not a PM sensor's first reading after its warm-up)."""

from __future__ import annotations

import dataclasses
from collections import Counter
from pathlib import Path

import pytest

from drivers.simulated import SimulatedSensor
from gateway.config import settings as config
from gateway.core.health import Health
from gateway.core.reading import Reading
from gateway.modules.chain import ModuleChain

T0 = 1_700_000_000.0
# Flags a reading gets whatever its value, not a finding of the modules: a warming sensor's
# driver says `warmup`, a failed read `sensor-error`.
NOT_FINDINGS = frozenset({"warmup", "sensor-error"})


def _chain(tmp_path: Path) -> ModuleChain:
    cfg = config.loads(config.sample_text(), base_dir=tmp_path)
    kinds = [m.kind for m in cfg.modules]
    assert kinds[0] == "ranges" and "spikes" in kinds and "dropout" in kinds
    # generous budgets: a loaded test machine must not turn verdicts into module errors
    configs = [dataclasses.replace(m, budget=1.0) for m in cfg.modules]
    return ModuleChain.from_config(configs, health=Health())


@pytest.mark.parametrize(
    ("faults", "every"),
    [(["range"], 6), (["range", "spike"], 20)],  # the demo's outdoor sensor; real spikes too
)
def test_injected_faults_are_flagged_and_the_readings_after_them_are_not(
    tmp_path: Path, faults: list[str], every: int
) -> None:
    chain = _chain(tmp_path)
    opts = {"kind": "climate", "site": "outdoor", "seed": 0}
    faulty = SimulatedSensor(
        sensor_id="outdoor", options={**opts, "faults": faults, "fault_every": every}
    )
    clean = SimulatedSensor(sensor_id="outdoor", options=opts)  # the same air, no faults
    wrong: Counter[str] = Counter()
    injected = caught = 0
    for k in range(7200):  # an hour at the demo's 0.5 s
        t = T0 + 0.5 * k
        truth = {m.quantity: m.value for m in clean.read(t)}
        readings = [Reading("outdoor", m.quantity, "", m.value, t, True) for m in faulty.read(t)]
        chain.judge(readings)
        for r in readings:
            findings = set(r.flags) - NOT_FINDINGS
            if r.value != truth[r.quantity]:
                injected += 1
                caught += bool(findings)
            else:
                wrong.update(findings)
    assert injected > 300
    assert caught >= 0.99 * injected
    assert not wrong, wrong


def test_the_first_pm_reading_after_the_warm_up_is_not_flagged(tmp_path: Path) -> None:
    """An SDS011 reports no value while its fan spins up (its driver flags the reads `warmup`);
    the first reading after that is the series' start, not the end of a dropout."""
    chain = _chain(tmp_path)
    pm = SimulatedSensor(sensor_id="pm", options={"kind": "pm", "seed": 0})
    flagged = []
    for k in range(600):
        t = T0 + k
        if k < 2:
            readings = [
                Reading("pm", q, "ug/m3", None, t, True, flags=["warmup"]) for q in pm.quantities
            ]
        else:
            readings = [Reading("pm", m.quantity, "ug/m3", m.value, t, True) for m in pm.read(t)]
        chain.judge(readings)
        flagged += [(k, r.quantity, r.flags) for r in readings if set(r.flags) - NOT_FINDINGS]
    assert flagged == []
