"""Helpers shared by the benchmarks: process counters, a latency histogram, a disk work dir, a
broker on the other core. Nothing here is timed; it only measures."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent


def say(msg: str) -> None:
    """Progress for the person running a bench; stdout carries only the JSON."""
    print(msg, file=sys.stderr, flush=True)


def target(value: float | None, limit: float, at_least: bool, unit: str) -> dict[str, Any]:
    """One figure against its target, as every bench prints it."""
    ok = value is not None and (value >= limit if at_least else value <= limit)
    op = ">=" if at_least else "<="
    return {"value": value, "target": f"{op} {limit:g} {unit}".strip(), "pass": ok}


def finish(result: dict[str, Any], verdicts: dict[str, bool]) -> int:
    """Record the verdicts in `result`, print it as JSON; the exit code says whether all passed."""
    result["pass"] = all(verdicts.values())
    result["failed"] = [k for k, ok in verdicts.items() if not ok]
    say("PASS" if result["pass"] else f"FAIL: {', '.join(result['failed'])}")
    print(json.dumps(result, indent=2))
    return 0 if result["pass"] else 1


#: file systems whose writes never reach a disk: a spool there would make write_bytes lie
MEMORY_FS = frozenset({"tmpfs", "ramfs", "devtmpfs", "overlay-tmpfs"})


# --- counters of this process ----------------------------------------------------------------


def proc_io() -> dict[str, int]:
    """/proc/self/io of the whole process (all threads): write_bytes is what it sent (or, for
    buffered writes, dirtied in the page cache, in 4 KiB pages) towards the block device."""
    out: dict[str, int] = {}
    with open("/proc/self/io") as f:
        for line in f:
            key, _, value = line.partition(":")
            out[key.strip()] = int(value)
    return out


def cpu_seconds() -> float:
    """User + system CPU of this process, every thread included."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def peak_rss_bytes() -> int:
    """Peak resident set of this process since it started (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def pin(cpu: int | None) -> None:
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})


def choose_cpus() -> tuple[int, set[int]]:
    """(core for the process under test, cores for the broker): the last allowed core and the
    rest. On a single-core machine both share it (and the figures say so)."""
    cpus = sorted(os.sched_getaffinity(0))
    bench = cpus[-1]
    rest = set(cpus[:-1]) or {bench}
    return bench, rest


# --- latency -----------------------------------------------------------------------------------


class LatencyHistogram:
    """Latencies in 10 µs bins, count-weighted, so memory does not grow with the readings."""

    RES = 1e-5

    def __init__(self) -> None:
        self.bins: Counter[int] = Counter()
        self.n = 0
        self.max = 0.0

    def add(self, latency: float, count: int = 1) -> None:
        self.bins[int(latency / self.RES)] += count
        self.n += count
        if latency > self.max:
            self.max = latency

    def quantile(self, q: float) -> float | None:
        if not self.n:
            return None
        rank = q * self.n
        seen = 0
        for b in sorted(self.bins):
            seen += self.bins[b]
            if seen >= rank:
                return (b + 1) * self.RES  # upper edge: never flatter than the truth
        return self.max

    def summary_ms(self) -> dict[str, float | None]:
        def ms(x: float | None) -> float | None:
            return None if x is None else round(x * 1e3, 2)

        return {
            "p50_ms": ms(self.quantile(0.50)),
            "p90_ms": ms(self.quantile(0.90)),
            "p99_ms": ms(self.quantile(0.99)),
            "max_ms": ms(self.max if self.n else None),
        }


# --- where the spool lives -----------------------------------------------------------------------


def fs_type(path: Path) -> str:
    """File system type of the mount holding `path` (longest matching mount point)."""
    path = path.resolve()
    best, kind = "", "unknown"
    with open("/proc/self/mounts") as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3:
                continue
            mnt = parts[1].replace("\\040", " ")
            inside = str(path) == mnt or str(path).startswith(mnt.rstrip("/") + "/")
            if inside and len(mnt) >= len(best):
                best, kind = mnt, parts[2]
    return kind


def disk_base() -> Path:
    """A temp directory on a real disk: the system temp dir unless it is in memory, then
    /var/tmp, then bench/.work."""
    for cand in (Path(tempfile.gettempdir()), Path("/var/tmp"), REPO / "bench" / ".work"):
        with contextlib.suppress(OSError):
            cand.mkdir(parents=True, exist_ok=True)
            if os.access(cand, os.W_OK) and fs_type(cand) not in MEMORY_FS:
                return cand
    raise RuntimeError("no writable directory on a disk-backed file system")


@contextlib.contextmanager
def workdir(prefix: str, keep: bool = False) -> Iterator[Path]:
    base = disk_base()
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=base))
    try:
        yield path
    finally:
        if not keep:
            shutil.rmtree(path, ignore_errors=True)


def check_disk(path: Path) -> str:
    kind = fs_type(path)
    if kind in MEMORY_FS:
        raise RuntimeError(f"{path} is on {kind}: write_bytes would not count disk writes")
    return kind


# --- the broker ----------------------------------------------------------------------------------


@contextlib.contextmanager
def broker(path: Path, cpus: set[int]) -> Iterator[Any]:
    """tests/brokers.py's mosquitto on a free loopback port, pinned to `cpus`."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from tests.brokers import Mosquitto

    b = Mosquitto(path)
    b.start()
    try:
        assert b.proc is not None
        with contextlib.suppress(OSError):
            os.sched_setaffinity(b.proc.pid, cpus)
        yield b
    finally:
        b.stop()


# --- the code under test: this tree, and a baseline revision beside it ------------------------


@contextlib.contextmanager
def worktree(rev: str, parent: Path) -> Iterator[Path]:
    """A detached `git worktree` of `rev` under `parent`, removed afterwards: the baseline a
    bench measures in the same run as this tree, on the same machine and load."""
    path = parent / f"baseline-{rev.replace('/', '_')}"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(path), rev],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    try:
        yield path
    finally:
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)],
            check=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


def describe(tree: Path) -> str:
    """The commit of `tree`, and whether its gateway/ or drivers/ differ from it."""
    rev = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(tree), "status", "--porcelain", "--", "gateway", "drivers"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    return f"{rev} with uncommitted changes to gateway/ or drivers/" if dirty else rev


def tree_env(tree: Path, **extra: str) -> dict[str, str]:
    """The environment that runs `tree`'s gateway with this venv's interpreter and packages:
    PYTHONPATH puts the tree ahead of the venv's editable install (its finder comes after
    sys.path). `check_tree` proves it did."""
    env = {**os.environ, "PYTHONPATH": str(tree), "PYTHONUNBUFFERED": "1", **extra}
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "RUNTIME_DIRECTORY"):
        if name not in extra:
            env.pop(name, None)
    # An installed package has its .pyc files (pip compiles them); without them every start
    # would compile the gateway's sources again, and that is what would be measured.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def compile_tree(tree: Path) -> None:
    """Write the .pyc files of `tree`'s packages, as pip does when it installs: a gateway's
    first start would otherwise compile them, and that would be measured."""
    subprocess.run(
        [sys.executable, "-m", "compileall", "-q", str(tree / "gateway"), str(tree / "drivers")],
        check=True,
        env=tree_env(tree),
        stdout=subprocess.DEVNULL,
    )


def check_tree(tree: Path) -> None:
    """Refuse to measure when `tree`'s env would import another tree's gateway."""
    code = "import gateway, drivers; print(gateway.__file__); print(drivers.__file__)"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=tree_env(tree),
        cwd="/",
    ).stdout.split()
    for f in out:
        if not Path(f).resolve().is_relative_to(tree.resolve()):
            raise RuntimeError(f"PYTHONPATH={tree} imports {f}: the figures would be mislabelled")


# --- the machine ---------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "kernel": platform.release(),
    }


@dataclass
class Counters:
    """A snapshot of the process counters; `since` gives the deltas."""

    wall: float
    cpu: float
    io: dict[str, int]

    @classmethod
    def now(cls, clock: Any) -> Counters:
        return cls(clock(), cpu_seconds(), proc_io())

    def since(self, start: Counters) -> dict[str, float]:
        return {
            "wall_s": self.wall - start.wall,
            "cpu_s": self.cpu - start.cpu,
            "write_bytes": self.io["write_bytes"] - start.io["write_bytes"],
            "cancelled_write_bytes": self.io["cancelled_write_bytes"]
            - start.io["cancelled_write_bytes"],
            "wchar": self.io["wchar"] - start.io["wchar"],
            "syscw": self.io["syscw"] - start.io["syscw"],
        }
