"""Start-up time of what a user types: `depin-gateway --help`, `status`, and the daemon's READY.

    python bench/startup.py [--baseline REV] [--no-baseline] [--repeat N]

Each figure is measured for this tree and, in the same run, for a baseline revision (default
HEAD: the working tree against its last commit) checked out beside it with `git worktree`;
both run with this venv's interpreter and packages, the tree put first on PYTHONPATH. The
measurements alternate between the trees round by round, so a machine that gets busier
mid-run weighs on both alike; the first round of each tree (compiling its .pyc files, creating
the spool) is not counted.

- `python_ms`: `python -c pass` of the venv: what any Python command costs before it starts;
- `help_ms`: `depin-gateway --help`, exec to exit;
- `ready_ms`: `depin-gateway run -c CONFIG`, exec to READY=1 on the NOTIFY_SOCKET the bench
  binds, as systemd sees it (Type=notify): the spool open, the uplink started, every sensor read
  once. CONFIG is the sample configuration's gateway: one simulated sensor every 10 s, the
  sample's seven rule modules, clock `auto`, defaults otherwise, against a mosquitto of the
  bench's (tests/brokers.py). `ready_tflite_ms`: the same plus the `tflite` module with the
  shipped model (no target: the runtime's import is the model's price);
- `status_ms`: `depin-gateway status -c CONFIG` while that gateway runs (its status file in
  the runtime directory the bench gives both trees), exec to exit: three times per round, once
  the daemon has written its values and settled (not while it competes with its own start);
- `ready_rss_bytes`, `numpy_loaded`: the daemon's VmHWM when it said READY, and whether numpy
  was mapped into it (sample config, no model);
- `stop_hangs`: daemons that were still running `STOP_S` after their SIGTERM (each is killed and
  its log's end printed; its READY still counts). Not start-up, but a bug to look into.

Figures are medians over `--repeat` rounds (min beside them); targets apply to the medians.
Prints one JSON object on stdout (figures, baseline, ratios, targets, pass), progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import benchlib
from benchlib import say, target

TARGET_HELP_MS = 60.0
TARGET_STATUS_MS = 100.0
TARGET_READY_MS = 250.0
SETTLE_S = 0.5  # after the daemon's values are in its status file, before `status` is timed
STOP_S = 30.0  # a daemon stops within its shutdown timeout (10 s by default) after SIGTERM
#: the sample configuration's gateway (`depin-gateway config sample`), written out here so that
#: both trees run the same file whatever either's sample says
MODULES = ("ranges", "spikes", "stuck", "replay", "dropout", "drift", "plausibility")
TFLITE = '\n[[module]]\nid = "temperature-model"\nkind = "tflite"\nmodel = "temperature-ae"\n'


def console_script() -> Path:
    exe = Path(sys.executable).parent / "depin-gateway"
    if not exe.exists():
        raise RuntimeError(f"{exe} not found: run the bench with the project's venv python")
    return exe


def write_config(workdir: Path, port: int, *, tflite: bool) -> Path:
    from gateway.wire import identity

    workdir.mkdir(parents=True, exist_ok=True)
    if not (workdir / "device.key").exists():
        identity.generate(workdir / "device.key")
    mods = "".join(f'\n[[module]]\nid = "{m}"\nkind = "{m}"\n' for m in MODULES)
    path = workdir / "gateway.toml"
    path.write_text(
        f"""[device]
name = "bench-startup"
key_file = "device.key"

[spool]
path = "spool.db"

[uplink]
url = "mqtt://127.0.0.1:{port}"

[[sensor]]
id = "climate"
driver = "simulated"
interval = "10 s"
kind = "climate"
seed = 1
{mods}{TFLITE if tflite else ""}"""
    )
    return path


def timed(cmd: list[str], env: dict[str, str]) -> float:
    """Milliseconds from exec to exit; the command must succeed."""
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ms = (time.perf_counter() - t0) * 1e3
    if r.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({r.returncode}): {r.stderr[-2000:]}")
    return ms


def vm(pid: int) -> dict[str, int]:
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.startswith("Vm"):
                out[key] = int(value.split()[0]) * 1024
    return out


def numpy_mapped(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as f:
        return any("/numpy/" in line for line in f)


class Tree:
    """One revision's gateway: its environment, configs and figures."""

    def __init__(self, name: str, path: Path, work: Path, port: int) -> None:
        self.name = name
        self.path = path
        self.work = work
        self.run_dir = work / "run"  # the RuntimeDirectory systemd would give the unit
        self.run_dir.mkdir(parents=True)
        self.env = benchlib.tree_env(path, RUNTIME_DIRECTORY=str(self.run_dir))
        self.sample = write_config(work / "sample", port, tflite=False)
        self.tflite = write_config(work / "tflite", port, tflite=True)
        self.samples: dict[str, list[float]] = {
            k: [] for k in ("help_ms", "status_ms", "ready_ms", "ready_tflite_ms")
        }
        self.ready_rss: list[int] = []
        self.numpy: list[bool] = []
        self.stop_hangs = 0

    def round(self, exe: Path, keep: bool) -> None:
        help_ms = timed([str(exe), "--help"], self.env)
        ready, status, rss, numpy = self.ready(exe, self.sample, status=True)
        ready_tflite, _, _, _ = self.ready(exe, self.tflite, status=False)
        if keep:
            self.samples["help_ms"].append(help_ms)
            self.samples["status_ms"] += status
            self.samples["ready_ms"].append(ready)
            self.samples["ready_tflite_ms"].append(ready_tflite)
            self.ready_rss.append(rss)
            self.numpy.append(numpy)

    def ready(self, exe: Path, cfg: Path, *, status: bool) -> tuple[float, list[float], int, bool]:
        """Start the daemon as systemd does; (ms to READY, ms of `status` while it runs,
        VmHWM at READY, numpy mapped)."""
        sock_path = self.work / "notify.sock"
        sock_path.unlink(missing_ok=True)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(sock_path))
            sock.settimeout(30)
            env = {**self.env, "NOTIFY_SOCKET": str(sock_path)}
            log = (cfg.parent / "run.log").open("ab")
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [str(exe), "run", "-c", str(cfg)], env=env, stdout=log, stderr=log, cwd=cfg.parent
            )
            try:
                while True:
                    try:
                        fields = sock.recv(4096).decode().split("\n")
                    except TimeoutError:
                        why = f"{self.name}: no READY=1 in 30 s; see {log.name}"
                        raise RuntimeError(why) from None
                    if "READY=1" in fields:
                        ready_ms = (time.perf_counter() - t0) * 1e3
                        break
                rss, numpy = vm(proc.pid)["VmHWM"], numpy_mapped(proc.pid)
                status_ms = self.status(exe, cfg) if status else []
            finally:
                proc.send_signal(signal.SIGTERM)
                try:
                    code: int | None = proc.wait(STOP_S)
                except subprocess.TimeoutExpired:
                    # Left running it would outlive the bench; what it measured still holds.
                    proc.kill()
                    proc.wait()
                    code = None
                    self.stop_hangs += 1
                log.close()
            if code is None:
                tail = Path(log.name).read_text(errors="replace")[-3000:]
                say(f"{self.name}: gateway running {STOP_S:g} s after SIGTERM, killed:\n{tail}")
            elif code != 0:
                raise RuntimeError(f"{self.name}: gateway exited with {code}; see {log.name}")
        return ready_ms, status_ms, rss, numpy

    def status(self, exe: Path, cfg: Path) -> list[float]:
        """`status` as an owner runs it: once the daemon has written its values (at its
        connect) and settled, not while it competes for the CPU with its own start."""
        deadline = time.monotonic() + 10
        while not self._has_values() and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(SETTLE_S)
        return [timed([str(exe), "status", "-c", str(cfg)], self.env) for _ in range(3)]

    def _has_values(self) -> bool:
        for f in self.run_dir.glob("*.json"):
            try:
                doc = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if (doc.get("state") or {}).get("sensors"):
                return True
        return False

    def figures(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, values in self.samples.items():
            out[k] = round(statistics.median(values), 1)
            out[k.replace("_ms", "_min_ms")] = round(min(values), 1)
        out["ready_rss_bytes"] = int(statistics.median(self.ready_rss))
        out["numpy_loaded"] = any(self.numpy)
        out["stop_hangs"] = self.stop_hangs
        return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--baseline", default="HEAD", metavar="REV", help="compare with (default HEAD)")
    p.add_argument("--no-baseline", action="store_true", help="measure this tree only")
    p.add_argument("--repeat", type=int, default=15, help="rounds counted (default 15)")
    ns = p.parse_args()
    if str(benchlib.REPO) not in sys.path:
        sys.path.insert(0, str(benchlib.REPO))
    exe = console_script()
    cpus = set(os.sched_getaffinity(0))
    with (
        benchlib.workdir("bench-startup-") as wd,
        benchlib.broker(wd / "broker", cpus) as broker,
        benchlib.worktree(ns.baseline, wd) if not ns.no_baseline else nullcontext() as base,
    ):
        paths = {"current": benchlib.REPO}
        if base is not None:
            paths["baseline"] = base
        trees = [Tree(n, path, wd / n, broker.port) for n, path in paths.items()]
        for t in trees:
            benchlib.check_tree(t.path)
            benchlib.compile_tree(t.path)
        python = [sys.executable, "-c", "pass"]
        python_ms: list[float] = []
        for i in range(ns.repeat + 1):
            say(f"round {i}/{ns.repeat}" + (" (warm-up, not counted)" if i == 0 else ""))
            python_ms.append(timed(python, benchlib.tree_env(benchlib.REPO)))
            for t in trees if i % 2 == 0 else reversed(trees):
                t.round(exe, keep=i > 0)
        result: dict[str, Any] = {
            "bench": "startup",
            "machine": benchlib.machine(),
            "repeat": ns.repeat,
            "python_ms": round(statistics.median(python_ms[1:]), 1),
            "current": {"tree": benchlib.describe(benchlib.REPO), **trees[0].figures()},
        }
        if len(trees) > 1:
            result["baseline"] = {"rev": ns.baseline, "tree": benchlib.describe(base)}
            result["baseline"].update(trees[1].figures())
    cur = result["current"]
    if "baseline" in result:
        b = result["baseline"]
        result["baseline_over_current"] = {
            k: round(b[k] / cur[k], 2)
            for k in ("help_ms", "status_ms", "ready_ms", "ready_tflite_ms", "ready_rss_bytes")
        }
    result["targets"] = {
        "help_ms": target(cur["help_ms"], TARGET_HELP_MS, False, "ms"),
        "status_ms": target(cur["status_ms"], TARGET_STATUS_MS, False, "ms"),
        "ready_ms": target(cur["ready_ms"], TARGET_READY_MS, False, "ms"),
    }
    for k, t in result["targets"].items():
        say(f"{k}: {t['value']} (target {t['target']})")
    return benchlib.finish(result, {k: t["pass"] for k, t in result["targets"].items()})


if __name__ == "__main__":
    raise SystemExit(main())
