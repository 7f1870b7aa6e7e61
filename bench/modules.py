"""The module chain's cost: CPU per reading of every registered detection module together,
and the peak RSS of a process holding the daemon's imports and that chain.

    python bench/modules.py [--readings N]

Prints one JSON object (figures, targets, pass) on stdout. The chain judges the simulated
sensor's readings exactly as the sampler hands them over: one call per sensor read. It runs in
a fresh process so its RSS is its own (daemon, drivers and chain imported), not the harness's.
That RSS is a quick proxy, a few MB under the real gateway's (no event loop, broker
connection, spool or its threads); bench/gateway_rss.py measures the gateway process itself.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

TARGET_US = 50.0
TARGET_RSS = 80e6


def worker(readings: int) -> dict[str, object]:
    import gateway.device.daemon  # noqa: F401  - the process as the daemon has it
    from drivers.simulated import SimulatedSensor
    from gateway.config.settings import ModuleConfig
    from gateway.core import plugins
    from gateway.core.health import Health
    from gateway.core.reading import Reading
    from gateway.modules.chain import ModuleChain

    configs = []
    for kind in plugins.modules():
        defaults = {k: f.default for k, f in plugins.module_class(kind).CONFIG.items()}
        configs.append(ModuleConfig(id=kind, kind=kind, options=defaults))
    health = Health()
    chain = ModuleChain.from_config(configs, health=health)
    sensor = SimulatedSensor(sensor_id="env", options={"kind": "all", "seed": 1})
    units = dict(sensor.quantities)
    t = 1_764_000_000.0
    n = 0
    cpu = 0.0
    clock = time.process_time
    while n < readings:  # only judging is timed; the sensor and the Readings are made outside
        t += 10.0
        batch = [
            Reading("env", m.quantity, units[m.quantity], m.value, t, True) for m in sensor.read(t)
        ]
        c0 = clock()
        chain.judge(batch)
        cpu += clock() - c0
        n += len(batch)
    return {
        "modules": [f"{i.name} {i.version}" for i in chain.info],
        "readings": n,
        "cpu_us_per_reading": round(cpu / n * 1e6, 2),
        "module_errors": dict(health.module_errors),
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--readings", type=int, default=200_000)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        print(json.dumps(worker(args.readings)))
        return 0
    out = subprocess.run(
        [sys.executable, __file__, "--worker", "--readings", str(args.readings)],
        capture_output=True,
        text=True,
        check=True,
        env=os.environ.copy(),
    )
    result = json.loads(out.stdout)
    targets = {
        "cpu_us_per_reading": {
            "value": result["cpu_us_per_reading"],
            "target": f"<= {TARGET_US} us",
            "pass": result["cpu_us_per_reading"] <= TARGET_US,
        },
        "peak_rss_bytes": {
            "value": result["peak_rss_bytes"],
            "target": f"< {TARGET_RSS:g} B",
            "pass": result["peak_rss_bytes"] < TARGET_RSS,
        },
        "no_module_errors": {
            "value": result["module_errors"],
            "target": "{}",
            "pass": not result["module_errors"],
        },
    }
    ok = all(t["pass"] for t in targets.values())
    print(json.dumps({"bench": "modules", **result, "targets": targets, "pass": ok}, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
