"""Peak RSS of the real gateway process, with the TFLite runtime and model loaded and without.

    python bench/gateway_rss.py [--interval S] [--seconds S] [--baseline REV | --no-baseline]
                                [--tflite-only]

Starts a mosquitto (tests/brokers.py's, free loopback port) and the daemon itself
(`python -m gateway run -c CONFIG`, as systemd runs it) with two simulated sensors read every
`--interval` (default 10 ms, the config's minimum) and every registered detection module with
its default options, the `tflite` one with the shipped model. It runs long enough for the
per-series state to fill (the `replay` module's fingerprint history is the largest: 8192 per
series by default), then reads VmHWM from /proc/PID/status before stopping the gateway with
SIGTERM. A second gateway with the same config minus the `tflite` module runs beside it, so the
runtime's and model's share is measured in the same run.

The same pair then runs from a baseline revision (default HEAD: the working tree against its
last commit), checked out with `git worktree` and run with this venv, so a change is measured
against what it changes on the same machine in the same run.

Prints one JSON object (figures, targets, pass) on stdout, progress on stderr; exit code 0 when
every target passed.
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import benchlib
from benchlib import say, target

#: peak RSS, bytes (decimal MB): with the TFLite runtime and model loaded, and without them
TARGET_RSS = 64e6
TARGET_RSS_NO_TFLITE = 48e6
#: the sensors: (id, simulated kind); the same pair as bench/pipeline.py's realistic mode
SENSORS = (("env", "all"), ("climate", "climate"))
SETTLE_S = 5.0  # start-up (imports, spool, connect) before the first read, generously
STOPPED = re.compile(r"stopped: (\d+) readings, (\d+) batches acknowledged")
MODULE_FAILED = re.compile(r"module \S+ failed")


def status(pid: int) -> dict[str, int]:
    """The Vm*/Rss* lines of /proc/PID/status, in bytes, and Threads."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.startswith(("Vm", "Rss")):
                out[key] = int(value.split()[0]) * 1024
            elif key == "Threads":
                out[key] = int(value)
    return out


def rss_by_file(pid: int, top: int = 12) -> dict[str, int]:
    """Where the resident set is: Rss per mapped file (its name) or kind of anonymous memory
    ([heap], [anon] ...), from /proc/PID/smaps, in kB, the `top` largest."""
    rss: dict[str, int] = {}
    name = "[anon]"
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            key, _, value = line.partition(" ")
            if not key.endswith(":"):
                fields = line.split(maxsplit=5)
                name = fields[5].strip().rpartition("/")[2] if len(fields) > 5 else "[anon]"
            elif key == "Rss:":
                rss[name] = rss.get(name, 0) + int(value.split()[0])
    return dict(sorted(rss.items(), key=lambda kv: -kv[1])[:top])


def modules(with_tflite: bool) -> list[str]:
    if str(benchlib.REPO) not in sys.path:
        sys.path.insert(0, str(benchlib.REPO))
    from gateway.core import plugins

    return [k for k in plugins.modules() if with_tflite or k != "tflite"]


def fill_reads(interval: float) -> tuple[int, list[str]]:
    """Sensor reads until the replay history is full, with the defaults, and the series that
    never fill: found by judging the same simulated sensors in this (harness) process, since
    only windows that pass the variation gate are remembered and the gate's pass rate is the
    simulator's (at 10 ms, pm1 is too coarse to pass often: it stays far from full)."""
    from drivers.simulated import SimulatedSensor
    from gateway.core.reading import Reading
    from gateway.modules.replay import ReplayModule

    mod = ReplayModule(module_id="replay", options={})
    sensors = [
        SimulatedSensor(sensor_id=sid, options={"kind": kind, "seed": 1}) for sid, kind in SENSORS
    ]
    full: dict[str, int] = {}
    t = time.time()
    for n in range(1, 3 * mod.history + 1):
        t += interval
        for s in sensors:
            mod.judge([Reading(s.sensor_id, m.quantity, "", m.value, t, True) for m in s.read(t)])
        if n >= mod.history:
            full.update(
                (k, n) for k in mod.state if k not in full and mod.remembered(k) >= mod.history
            )
    if not full:
        raise RuntimeError("the replay history never fills with this sensor")
    return max(full.values()), sorted(set(mod.state) - set(full))


def write_config(workdir: Path, port: int, interval: float, kinds: list[str]) -> Path:
    """Defaults everywhere except what the bench must say: where things are, the sensors'
    interval, `clock.mode = synced` (no NTP probing on a bench machine)."""
    from gateway.wire import identity

    workdir.mkdir(parents=True, exist_ok=True)
    identity.generate(workdir / "device.key")
    sensors = "".join(
        f'\n[[sensor]]\nid = "{sid}"\ndriver = "simulated"\ninterval = {interval}\n'
        f'kind = "{kind}"\nseed = 1\n'
        for sid, kind in SENSORS
    )
    mods = "".join(f'\n[[module]]\nid = "{k}"\nkind = "{k}"\n' for k in kinds)
    path = workdir / "gateway.toml"
    path.write_text(
        f"""[device]
name = "bench-rss"
key_file = "device.key"

[spool]
path = "spool.db"

[uplink]
url = "mqtt://127.0.0.1:{port}"

[clock]
mode = "synced"
{sensors}{mods}"""
    )
    return path


class Gateway:
    """`python -m gateway run` in its own process, its VmRSS sampled while it runs."""

    def __init__(self, name: str, config: Path, tree: Path) -> None:
        self.name = name
        self.config = config
        self.log = config.parent / "gateway.log"
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway", "run", "-c", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=config.parent,
                env=benchlib.tree_env(tree),
            )
        self.started = time.monotonic()
        self.timeline: list[tuple[float, int]] = []  # (s since start, VmRSS)
        self.final: dict[str, int] = {}

    def sample(self, keep: bool) -> None:
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} gateway exited early:\n{self.log.read_text()}")
        self.final = status(self.proc.pid)
        if keep:
            self.timeline.append((time.monotonic() - self.started, self.final["VmRSS"]))

    def stop(self) -> dict[str, Any]:
        """Stop it as systemd would (SIGTERM) and collect its figures; `final` was read just
        before, while it still held its full state."""
        where = rss_by_file(self.proc.pid)  # as `final`: still holding its full state
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        log = self.log.read_text()
        m = STOPPED.search(log)
        readings = int(m[1]) if m else None
        return {
            "peak_rss_bytes": self.final["VmHWM"],
            "rss_bytes": self.final["VmRSS"],
            "rss_anon_bytes": self.final.get("RssAnon"),
            "rss_file_bytes": self.final.get("RssFile"),
            "rss_kb_by_file": where,
            "threads": self.final.get("Threads"),
            "readings": readings,
            "module_failures": len(MODULE_FAILED.findall(log)),
            "exit_code": code,
            "rss_mb_every_10s": [round(rss / 1e6, 1) for _, rss in self.timeline],
        }


def run_tree(
    tree: Path, wd: Path, port: int, ns: argparse.Namespace, seconds: float
) -> dict[str, Any]:
    """The gateways of one tree side by side (with the `tflite` module and without), their
    figures by variant."""
    benchlib.compile_tree(tree)  # a first start compiling the sources would raise the peak
    variants = {"tflite": True} if ns.tflite_only else {"tflite": True, "no_tflite": False}
    gateways = [
        Gateway(name, write_config(wd / name, port, ns.interval, modules(tflite)), tree)
        for name, tflite in variants.items()
    ]
    try:
        t0 = time.monotonic()
        next_keep = t0
        while (now := time.monotonic()) < t0 + seconds:
            keep = now >= next_keep
            if keep:
                next_keep += 10.0
            for g in gateways:
                g.sample(keep)
            time.sleep(0.5)
        for g in gateways:
            g.sample(True)
        figures = {g.name: g.stop() for g in gateways}
    finally:
        for g in gateways:
            if g.proc.poll() is None:
                g.proc.kill()
                g.proc.wait()
    quantities = sum(len(_quantities(kind)) for _, kind in SENSORS)
    for f in figures.values():
        n = f["readings"]
        f["reads_per_sensor"] = None if n is None else n // quantities
    if "no_tflite" in figures:
        figures["tflite_share_bytes"] = (
            figures["tflite"]["peak_rss_bytes"] - figures["no_tflite"]["peak_rss_bytes"]
        )
    return {"tree": benchlib.describe(tree), **figures}


def run(ns: argparse.Namespace) -> dict[str, Any]:
    reads, never = fill_reads(ns.interval)
    seconds = ns.seconds or SETTLE_S + 1.3 * reads * ns.interval
    say(f"replay history fills after {reads} reads per sensor (not: {never}); {seconds:.0f} s")
    cpus = set(os.sched_getaffinity(0))
    result: dict[str, Any] = {
        "interval_s": ns.interval,
        "sensors": [f"{sid} ({kind})" for sid, kind in SENSORS],
        "modules": modules(True),
        "fill_reads_per_sensor": reads,
        "series_never_full": never,
        "seconds": round(seconds, 1),
    }
    with (
        benchlib.workdir("bench-rss-") as wd,
        benchlib.broker(wd / "broker", cpus) as broker,
        nullcontext() if ns.no_baseline else benchlib.worktree(ns.baseline, wd) as base,
    ):
        trees = {"current": benchlib.REPO}
        if base is not None:
            trees["baseline"] = base
        for name, tree in trees.items():
            benchlib.check_tree(tree)
            say(f"{name}: {benchlib.describe(tree)}, {seconds:.0f} s")
            result[name] = run_tree(tree, wd / name, broker.port, ns, seconds)
    if "baseline" in result:
        result["baseline"]["rev"] = ns.baseline
        result["baseline_over_current"] = {
            v: round(result["baseline"][v]["peak_rss_bytes"] / f["peak_rss_bytes"], 3)
            for v, f in result["current"].items()
            if isinstance(f, dict)
        }
    return result


def _quantities(kind: str) -> tuple[str, ...]:
    from drivers.simulated import KIND_QUANTITIES

    return tuple(KIND_QUANTITIES[kind])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--interval", type=float, default=0.01, help="sensor interval, s (min 0.01)")
    p.add_argument(
        "--seconds", type=float, default=0.0, help="run time (default: until replay is full)"
    )
    p.add_argument("--baseline", default="HEAD", metavar="REV", help="compare with (default HEAD)")
    p.add_argument("--no-baseline", action="store_true", help="measure this tree only")
    p.add_argument("--tflite-only", action="store_true", help="skip the gateways without tflite")
    ns = p.parse_args()
    result = run(ns)
    cur = result["current"]
    base = result.get("baseline", {})
    limits = {"tflite": TARGET_RSS, "no_tflite": TARGET_RSS_NO_TFLITE}
    targets: dict[str, Any] = {}
    for variant, limit in limits.items():
        if variant not in cur:
            continue
        g = cur[variant]
        peak_mb = round(g["peak_rss_bytes"] / 1e6, 1)
        targets[f"{variant}.peak_rss_mb"] = target(peak_mb, limit / 1e6, False, "MB")
        if variant in base:  # the same figure of the baseline revision, measured in this run
            targets[f"{variant}.peak_rss_mb"]["baseline"] = {
                "rev": ns.baseline,
                "value": round(base[variant]["peak_rss_bytes"] / 1e6, 1),
            }
        # a peak taken before the state filled would flatter the gateway
        targets[f"{variant}.replay_history_full"] = target(
            g["reads_per_sensor"], result["fill_reads_per_sensor"], True, "reads per sensor"
        )
        targets[f"{variant}.clean_run"] = {
            "value": {"module_failures": g["module_failures"], "exit_code": g["exit_code"]},
            "target": "no module failure, exit code 0",
            "pass": g["module_failures"] == 0 and g["exit_code"] == 0,
        }
    for k, t in targets.items():
        b = t.get("baseline")
        against = f"; {b['rev']}: {b['value']}" if b else ""
        say(f"{k}: {t['value']} (target {t['target']}{against})")
    out = {"bench": "gateway_rss", "machine": benchlib.machine(), **result, "targets": targets}
    return benchlib.finish(out, {k: t["pass"] for k, t in targets.items()})


if __name__ == "__main__":
    raise SystemExit(main())
