"""The pipeline benchmark: simulated sensors through modules, spool, sealing and a real mosquitto.

    python bench/pipeline.py --mode full         # full speed + the naive baseline, one core
    python bench/pipeline.py --mode realistic    # 8 quantities every 10 s, disk bytes per hour
    python bench/pipeline.py --mode backlog      # 100,000 readings held while the broker is away
    python bench/pipeline.py --mode all          # all three
    python bench/pipeline.py --mode all --baseline REV   # and the gateway of commit REV beside


One JSON object on stdout (figures, targets, pass/fail); human text on stderr. Every
measurement runs in its own fresh subprocess (`--worker ...`), so peak RSS and /proc/self/io are
the measured code's alone, not the harness's or the other side's. bench/README.md explains
each figure.

`--baseline REV` checks commit REV out in a temporary git worktree and runs every gateway worker
a second time with that tree's `gateway` package first on the path (same harness, same broker,
same machine, same run): its figures are under `baseline`, and `vs_baseline` gives this tree's
figure divided by the baseline's. Targets are judged on this tree only.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import logging
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import benchlib
from benchlib import Counters, LatencyHistogram, say, target

HERE = Path(__file__).resolve().parent

# Targets on one core of the reference machine (the issue).
TARGET_READINGS_PER_S = 40_000
TARGET_RATIO = 30.0
TARGET_BYTES_PER_READING = 250
TARGET_BYTES_PER_HOUR = 4_000_000  # 4 MB, decimal: the stricter reading
TARGET_PEAK_RSS = 60_000_000  # 60 MB, decimal
REALISTIC_QUANTITIES = 8  # read every 10 s: 2880 readings per hour
#: the realistic run's measuring window starts this late, so the spool's creation and the
#: first connection stay out of it and the periodic commits (every 60 s by default) never sit
#: on its edges
REALISTIC_SETTLE_S = 15.0
TARGET_BATCH_FILL = 0.95  # mean readings per batch / batch_max_readings, at full speed
BACKLOG_READINGS = 100_000
TARGET_DRAIN_S = 60.0  # a backlog of BACKLOG_READINGS delivered, at default settings


def gateway_config(workdir: Path, port: int, sensors: str) -> Path:
    """A config with default settings, except where the bench must say where things are."""
    from gateway.wire import identity

    key = workdir / "device.key"
    if not key.exists():
        identity.generate(key)
    path = workdir / "gateway.toml"
    path.write_text(
        f"""
[device]
name = "bench-gateway"
key_file = "device.key"

[spool]
path = "spool.db"

[uplink]
url = "mqtt://127.0.0.1:{port}"
{sensors}
[[module]]
id = "physics"
kind = "ranges"
"""
    )
    return path


#: the full-speed and backlog runs' one sensor: read as fast as it goes, not on its interval
FAST_SENSOR = '[[sensor]]\nid = "env"\ndriver = "simulated"\nkind = "all"\nseed = 1\n'


def commit_buffer(gw: Any) -> Any:
    """The gateway's commit buffer (in a baseline from before the daemon's services: its
    `pipeline`)."""
    return gw.commits if hasattr(gw, "commits") else gw.pipeline


def hook_sealed(gw: Any, hook: Callable[[int, bytes, int], None]) -> None:
    """Call `hook(seq, message, n)` right after the daemon hands each sealed batch to the uplink
    (in a baseline from before the daemon's services: after its pipeline's `on_sealed`)."""
    owner, name = (gw.uplink, "offer") if hasattr(gw, "commits") else (gw.pipeline, "on_sealed")
    daemon_handover = getattr(owner, name)

    def handover(*args: Any) -> None:
        daemon_handover(*args)
        # a SealedBatch, or (in a baseline) its three fields
        seq, message, n = args[0] if len(args) == 1 else args
        hook(seq, message, n)

    setattr(owner, name, handover)


async def in_spool_thread(gw: Any, fn: Callable[[], Any]) -> Any:
    """`fn` on the gateway's spool thread."""
    executor = gw.storage.thread if hasattr(gw, "storage") else gw.executor
    return await asyncio.get_running_loop().run_in_executor(executor, fn)


def clock_source(gw: Any) -> str:
    clock = gw.clock
    return str(clock.state.source if hasattr(clock, "state") else clock.source)


def gateway_source() -> str:
    """Where the `gateway` package under test was imported from (this tree or a baseline)."""
    import gateway

    return str(Path(gateway.__file__).resolve().parent)


# =============================================================================================
# Worker: the gateway at full speed (runs in its own process)
# =============================================================================================


async def full_speed(
    workdir: Path,
    port: int,
    seconds: float,
    max_readings: int,
    window: int,
    stop_at_once: bool = False,
) -> dict[str, Any]:
    """The real Gateway (gateway/device/daemon.py), its one simulated sensor read as fast as it
    goes.

    Everything is the daemon's own: the services it composes, its run loop (commit buffer,
    uplink, clock and health tasks), the sampler's `accept`, and its shutdown (forced seal,
    drain, final commit). Only the sensor task's `run` (read, accept, sleep until the next
    interval) is replaced by a loop without the sleep, using the same `read_once`. Two
    hand-overs are wrapped to timestamp: of each sealed batch to the uplink, and of each
    acknowledgement to the commit buffer (the uplink's `on_ack`)."""
    from gateway.config import settings as config
    from gateway.device.daemon import Gateway
    from gateway.wire import identity

    cfg = config.load(gateway_config(workdir, port, FAST_SENSOR))
    gw = Gateway(cfg, ident=identity.load(cfg.device.key_file), shutdown_timeout=120.0)
    health, pipeline, uplink = gw.health, commit_buffer(gw), gw.uplink
    (sensor,) = gw.sensors

    # Latency bookkeeping: readings are sealed in the order they were accepted, so a batch of
    # n readings takes the next n from the FIFO of [count, accept time] per accept.
    accepted: collections.deque[list[Any]] = collections.deque()
    in_batch: dict[int, list[tuple[int, float]]] = {}
    hist = LatencyHistogram()
    acked_event = asyncio.Event()
    perf = time.perf_counter
    last_ack = 0.0
    n_sealed = n_unmatched = 0
    # Acknowledgements reach the commit buffer's `acked` (in a baseline: a callback given to
    # the uplink, `_on_ack`).
    old_ack = hasattr(uplink, "_on_ack")
    daemon_ack = uplink._on_ack if old_ack else pipeline.acked
    assert daemon_ack == pipeline.acked, "the uplink no longer reports acks to the commit buffer"

    def on_sealed(seq: int, message: bytes, n: int) -> None:
        nonlocal n_sealed, n_unmatched
        n_sealed += n
        parts: list[tuple[int, float]] = []
        while n:
            if not accepted:  # sealed more readings than were accepted: duplicates
                n_unmatched += n
                break
            head = accepted[0]
            take = min(n, head[0])
            parts.append((take, head[1]))
            head[0] -= take
            n -= take
            if not head[0]:
                accepted.popleft()
        in_batch[seq] = parts

    def on_ack(seq: int, n: int) -> None:
        nonlocal last_ack
        daemon_ack(seq, n)
        last_ack = now = perf()
        for count, t in in_batch.pop(seq, ()):
            hist.add(now - t, count)
        acked_event.set()

    hook_sealed(gw, on_sealed)
    if old_ack:
        uplink._on_ack = on_ack
    else:
        pipeline.acked = on_ack  # the uplink calls it on the instance

    stop = asyncio.Event()
    marks: dict[str, Any] = {}
    n_accepted = n_sealed = n_unmatched = 0
    bmr = cfg.uplink.batch_max_readings

    async def full_speed_sensor() -> None:
        nonlocal n_accepted
        while not health.connected:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)  # the birth message and status go out before the clock starts
        marks["start"] = start = Counters.now(perf)
        reads_per_yield = max(1, cfg.uplink.batch_max_readings // len(sensor.units) // 4)
        deadline = start.wall + seconds
        read_once, accept = sensor.read_once, sensor.accept  # accept is the sampler's
        while n_accepted < max_readings and perf() < deadline:
            for _ in range(reads_per_yield):
                readings = await read_once()
                accept(readings)
                accepted.append([len(readings), perf()])
                n_accepted += len(readings)
            await asyncio.sleep(0)
            # Back-pressure: no more readings in flight than the spool seals ahead of the
            # broker; beyond that they would wait as pending rows (a backlog, not throughput).
            while n_accepted - health.readings_acked >= window:
                acked_event.clear()
                await acked_event.wait()
        marks["fed"] = Counters.now(perf)
        if not stop_at_once:
            # Let the pipeline go idle first: no commit running (what is not durable yet is
            # less than a batch, so nothing wakes it), every sealed batch acknowledged. The
            # daemon's shutdown cancels a commit in flight, which stores its readings twice.
            while not (
                health.readings > n_accepted - bmr
                and health.batches_acked == health.batches_sealed
                and uplink.pending == 0
            ):
                await asyncio.sleep(0.001)
        stop.set()  # the daemon's shutdown: forced seal, drain, final commit
        await asyncio.Event().wait()

    sensor.run = full_speed_sensor  # type: ignore[method-assign]
    await gw.run(stop)
    end = Counters.now(perf)
    with contextlib.closing(sqlite3.connect(cfg.spool.path)) as db:
        left = {
            "pending_readings": db.execute("SELECT count(*) FROM readings").fetchone()[0],
            "sealed_batches": db.execute("SELECT count(*) FROM batches").fetchone()[0],
        }

    start: Counters = marks["start"]
    acked = health.readings_acked
    d = end.since(start)
    wall = last_ack - start.wall
    u = cfg.uplink
    return {
        "readings_accepted": n_accepted,
        "readings_acked": acked,
        "batches_sealed": health.batches_sealed,
        "batches_acked": health.batches_acked,
        "readings_sealed": n_sealed,
        "batch_fill": (
            round(n_sealed / (health.batches_sealed * bmr), 4) if health.batches_sealed else None
        ),
        "all_acked": acked == n_accepted == n_sealed and not any(left.values()),
        "duplicates_sealed": n_unmatched,
        "left_in_spool": left,
        "feeding_s": round(marks["fed"].wall - start.wall, 3),
        "wall_s": round(wall, 3),
        "readings_per_s": round(acked / wall, 1) if wall > 0 else None,
        "cpu_s": round(d["cpu_s"], 3),
        "cpu_us_per_reading": round(d["cpu_s"] / acked * 1e6, 2) if acked else None,
        "cpu_utilisation": round(d["cpu_s"] / wall, 3) if wall > 0 else None,
        "write_bytes": d["write_bytes"],
        "cancelled_write_bytes": d["cancelled_write_bytes"],
        "write_bytes_per_reading": round(d["write_bytes"] / acked, 1) if acked else None,
        "wchar_per_reading": round(d["wchar"] / acked, 1) if acked else None,
        "write_syscalls": d["syscw"],
        "latency": hist.summary_ms(),
        "peak_rss_bytes": benchlib.peak_rss_bytes(),
        "window_readings": window,
        "gateway_source": gateway_source(),
        "settings": {
            "commit_interval_s": cfg.spool.commit_interval,
            "batch_max_readings": u.batch_max_readings,
            "batch_max_age_s": u.batch_max_age,
            "max_inflight": u.max_inflight,
            "protocol": health.protocol,
            "clock": clock_source(gw),
        },
    }


# =============================================================================================
# Worker: the real Gateway at a realistic load (runs in its own process)
# =============================================================================================


REALISTIC_SENSORS = """
[[sensor]]
id = "env"
driver = "simulated"
interval = "10 s"
kind = "all"
seed = 1

[[sensor]]
id = "climate"
driver = "simulated"
interval = "10 s"
kind = "climate"
quantities = ["temperature"]
seed = 2
"""


async def realistic(workdir: Path, port: int, minutes: float) -> dict[str, Any]:
    """gateway.device.daemon.Gateway as `depin-gateway run` builds it, with default settings."""
    from gateway.config import settings as config
    from gateway.device.daemon import Gateway
    from gateway.wire import identity

    cfg = config.load(gateway_config(workdir, port, REALISTIC_SENSORS))
    gw = Gateway(cfg, ident=identity.load(cfg.device.key_file))
    quantities = sum(len(s.units) for s in gw.sensors)
    if quantities != REALISTIC_QUANTITIES:
        raise RuntimeError(f"the realistic load needs 8 quantities, the sensors give {quantities}")
    stop = asyncio.Event()
    perf = time.perf_counter
    out: dict[str, Any] = {}

    async def measure() -> None:
        t0 = perf()
        await asyncio.sleep(REALISTIC_SETTLE_S)
        start = Counters.now(perf)
        h0 = (gw.health.readings, gw.health.batches_sealed, gw.health.readings_acked)
        commits = 0
        spool_commit = gw.spool.commit

        def counting_commit(*a: Any, **kw: Any) -> Any:  # counts, changes nothing
            nonlocal commits
            commits += 1
            return spool_commit(*a, **kw)

        gw.spool.commit = counting_commit  # type: ignore[method-assign]
        span = minutes * 60.0
        while perf() - start.wall < span:
            await asyncio.sleep(min(10.0, span - (perf() - start.wall)))
            left = span - (perf() - start.wall)
            say(
                f"  realistic: {gw.health.readings} readings durable, "
                f"{gw.health.batches_acked} batches acknowledged, {max(0.0, left):.0f} s left"
            )
        end = Counters.now(perf)
        d = end.since(start)
        h = gw.health
        out.update(
            window_start_s=round(start.wall - t0, 1),
            window_s=round(d["wall_s"], 1),
            readings_durable_in_window=h.readings - h0[0],
            batches_sealed_in_window=h.batches_sealed - h0[1],
            readings_acked_in_window=h.readings_acked - h0[2],
            write_bytes=d["write_bytes"],
            cancelled_write_bytes=d["cancelled_write_bytes"],
            write_syscalls=d["syscw"],
            wchar=d["wchar"],
            write_bytes_per_hour=round(d["write_bytes"] * 3600.0 / d["wall_s"]),
            write_bytes_per_commit=round(d["write_bytes"] / commits) if commits else None,
            commits_in_window=commits,
            commits_per_hour=round(commits * 3600.0 / d["wall_s"], 1),
            cpu_s=round(d["cpu_s"], 3),
            cpu_percent=round(100.0 * d["cpu_s"] / d["wall_s"], 3),
        )
        stop.set()

    task = asyncio.create_task(measure())
    await gw.run(stop)
    await task
    h = gw.health
    out.update(
        quantities=quantities,
        readings_per_hour=round(quantities * 3600 / 10),
        readings_total=h.readings,
        batches_sealed_total=h.batches_sealed,
        batches_acked_total=h.batches_acked,
        peak_rss_bytes=benchlib.peak_rss_bytes(),
        gateway_source=gateway_source(),
        settings={
            "commit_interval_s": cfg.spool.commit_interval,
            "batch_max_readings": cfg.uplink.batch_max_readings,
            "batch_max_age_s": cfg.uplink.batch_max_age,
            "sensors": [(s.id, s.interval) for s in cfg.sensors],
        },
    )
    return out


# =============================================================================================
# Worker: a backlog drained when the broker returns (runs in its own process)
# =============================================================================================


async def backlog(
    workdir: Path, broker_cpus: set[int], readings: int, drain_timeout: float
) -> dict[str, Any]:
    """The real Gateway with default settings and its own mosquitto (free port, pinned to the
    broker's cores). Connected, the broker is stopped; `readings` readings are fed as fast as
    the sensor goes (the spool seals its window, 2 x max_inflight batches, and keeps the rest
    as pending rows); once they are all durable the broker is started again, and the clock
    runs until the broker has acknowledged every one of them. No reading is fed after the
    outage, so nothing but the backlog is delivered and the drain ends at zero."""
    from gateway.config import settings as config
    from gateway.device.daemon import Gateway
    from gateway.wire import identity

    perf = time.perf_counter
    with benchlib.broker(workdir / "broker", broker_cpus) as b:
        cfg = config.load(gateway_config(workdir, b.port, FAST_SENSOR))
        gw = Gateway(cfg, ident=identity.load(cfg.device.key_file), shutdown_timeout=5.0)
        health, pipeline = gw.health, commit_buffer(gw)
        (sensor,) = gw.sensors
        bmr = cfg.uplink.batch_max_readings
        commits = 0
        spool_commit = gw.spool.commit

        def counting_commit(*a: Any, **kw: Any) -> Any:  # counts, changes nothing
            nonlocal commits
            commits += 1
            return spool_commit(*a, **kw)

        gw.spool.commit = counting_commit  # type: ignore[method-assign]
        n_sealed_readings = [0]

        def on_sealed(seq: int, message: bytes, n: int) -> None:
            n_sealed_readings[0] += n

        hook_sealed(gw, on_sealed)
        stop = asyncio.Event()
        out: dict[str, Any] = {}

        async def wait_for(cond: Any, timeout: float) -> bool:
            deadline = perf() + timeout
            while not cond():
                if perf() > deadline:
                    return False
                await asyncio.sleep(0.001)
            return True

        async def scenario() -> None:
            if not await wait_for(lambda: health.connected, 30):
                raise RuntimeError("backlog: the gateway never connected")
            await asyncio.sleep(0.2)  # birth and status out
            t_stop = perf()
            await asyncio.to_thread(b.stop)
            await wait_for(lambda: not health.connected, 30)
            # The outage: the backlog builds up as fast as the sensor reads.
            t_feed = perf()
            reads_per_yield = max(1, bmr // len(sensor.units) // 4)
            read_once, accept = sensor.read_once, sensor.accept  # accept is the sampler's
            n = 0
            while n < readings:
                for _ in range(reads_per_yield):
                    batch = (await read_once())[: readings - n]
                    accept(batch)
                    n += len(batch)
                    if n >= readings:
                        break
                await asyncio.sleep(0)
            # What is left in memory is committed as the interval would commit it: the same
            # explicit commit for every tree, so no tree waits up to 60 s for its tick here.
            await pipeline.commit()
            if not await wait_for(lambda: health.readings >= readings, 120):
                raise RuntimeError(f"backlog: only {health.readings} readings durable")
            t_held = perf()
            st = await in_spool_thread(gw, gw.spool.stats)
            connects, c0, commits0 = health.connects, Counters.now(perf), commits
            sealed0 = (health.batches_sealed, n_sealed_readings[0])
            # The broker returns.
            t_restart = perf()
            await asyncio.to_thread(b.start)
            assert b.proc is not None
            with contextlib.suppress(OSError):
                os.sched_setaffinity(b.proc.pid, broker_cpus)
            t_listen = perf()
            await wait_for(lambda: health.connects > connects, drain_timeout)
            t_conn = perf()
            drained = await wait_for(
                lambda: health.readings_acked >= readings, t_conn + drain_timeout - perf()
            )
            t_done = perf()
            c1 = Counters.now(perf)
            d = c1.since(c0)
            acked = health.readings_acked
            drain = t_done - t_conn
            batches = health.batches_sealed - sealed0[0]
            sealed_n = n_sealed_readings[0] - sealed0[1]
            out.update(
                readings=readings,
                drained=drained,
                readings_acked=acked,
                feeding_s=round(t_held - t_feed, 3),
                outage_s=round(t_restart - t_stop, 3),
                at_restart={"pending_readings": st.pending, "sealed_batches": st.sealed},
                broker_start_s=round(t_listen - t_restart, 3),
                reconnect_s=round(t_conn - t_restart, 3),
                drain_s=round(drain, 3),
                since_restart_s=round(t_done - t_restart, 3),
                drain_readings_per_s=round(acked / drain, 1) if drain > 0 else None,
                commits_in_drain=commits - commits0,
                batches_sealed_in_drain=batches,
                batch_fill_in_drain=round(sealed_n / (batches * bmr), 4) if batches else None,
                drain_cpu_s=round(d["cpu_s"], 3),
                drain_write_bytes=d["write_bytes"],
            )
            stop.set()
            await asyncio.Event().wait()

        sensor.run = scenario  # type: ignore[method-assign]
        await gw.run(stop)
        with contextlib.closing(sqlite3.connect(cfg.spool.path)) as db:
            left = {
                "pending_readings": db.execute("SELECT count(*) FROM readings").fetchone()[0],
                "sealed_batches": db.execute("SELECT count(*) FROM batches").fetchone()[0],
            }
    u = cfg.uplink
    out.update(
        left_in_spool=left,
        empty_after=out.get("drained", False) and not any(left.values()),
        peak_rss_bytes=benchlib.peak_rss_bytes(),
        gateway_source=gateway_source(),
        settings={
            "commit_interval_s": cfg.spool.commit_interval,
            "batch_max_readings": u.batch_max_readings,
            "batch_max_age_s": u.batch_max_age,
            "max_inflight": u.max_inflight,
            "seal_ahead": gw.spool.seal_ahead,
            "reconnect_max_s": u.reconnect_max,
        },
    )
    return out


# =============================================================================================
# The harness
# =============================================================================================


def run_worker(args: list[str], timeout: float, tree: Path | None = None) -> dict[str, Any]:
    """A worker in a fresh interpreter; its last stdout line is its JSON result. With `tree`,
    that tree's `gateway` and `drivers` are imported (benchlib.tree_env): a baseline's code
    under this harness."""
    proc = subprocess.run(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=None,
        text=True,
        timeout=timeout,
        check=False,
        cwd=benchlib.REPO,
        env=None if tree is None else benchlib.tree_env(tree),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"worker {args} failed with exit code {proc.returncode}")
    lines = [x for x in proc.stdout.splitlines() if x.strip()]
    return dict(json.loads(lines[-1]))


@contextlib.contextmanager
def trees(rev: str | None) -> Iterator[dict[str, Path | None]]:
    """The gateways to measure: this tree, and with `rev` that commit in a temporary git
    worktree beside it (removed afterwards)."""
    if rev is None:
        yield {"gateway": None}
        return
    with benchlib.workdir("bench-baseline-") as wd, benchlib.worktree(rev, wd) as tree:
        benchlib.compile_tree(tree)
        benchlib.check_tree(tree)
        say(f"baseline: {rev} = {benchlib.describe(tree)} in {tree}")
        yield {"gateway": None, "baseline": tree}


def compare(runs: dict[str, dict[str, Any]], figures: dict[str, list[str]]) -> dict[str, Any]:
    """This tree's figure / the baseline's, for each figure (a path of keys); said beside."""
    if "baseline" not in runs:
        return {}

    def pick(run: dict[str, Any], path: list[str]) -> Any:
        value: Any = run
        for k in path:
            value = value.get(k) if isinstance(value, dict) else None
        return value

    out: dict[str, Any] = {}
    for name, path in figures.items():
        a, b = pick(runs["gateway"], path), pick(runs["baseline"], path)
        numbers = isinstance(a, int | float) and isinstance(b, int | float)
        ratio = round(a / b, 3) if numbers and b else None
        out[name] = {"gateway": a, "baseline": b, "ratio": ratio}
        say(f"  {name}: {a} (baseline {b}, ratio {ratio})")
    return out


def say_targets(part: str, targets: dict[str, dict[str, Any]]) -> None:
    """Each figure beside its target, as the JSON has them."""
    for name, t in targets.items():
        verdict = "pass" if t["pass"] else "FAIL"
        say(f"  {part}.{name}: {t['value']} (target {t['target']}) {verdict}")


def gateway_runs(
    label: str, tree_map: dict[str, Path | None], cpu: int, options: list[str], timeout: float
) -> dict[str, dict[str, Any]]:
    """One `--worker label` per tree on core `cpu` with the mode's own `options`, each in its
    own work dir (its spool, and its broker if it has one)."""
    runs: dict[str, dict[str, Any]] = {}
    for name, tree in tree_map.items():
        with benchlib.workdir(f"bench-{label}-") as wd:
            fs = benchlib.check_disk(wd)
            say(f"{label}: {name}{'' if tree is None else ' (' + str(tree) + ')'}, in {wd} ({fs})")
            args = [str(HERE / "pipeline.py"), "--worker", label, "--workdir", str(wd)]
            runs[name] = run_worker([*args, "--cpu", str(cpu), *options], timeout, tree)
    return runs


def mode_full(
    ns: argparse.Namespace, cpu: int, port: int, tree_map: dict[str, Path | None]
) -> dict[str, Any]:
    say(f"full speed: gateway for {ns.seconds:g} s on core {cpu}")

    options = [
        *("--port", str(port), "--seconds", str(ns.seconds), "--readings", str(ns.readings)),
        *("--window", str(ns.window), *(["--stop-at-once"] if ns.stop_at_once else [])),
    ]
    runs = gateway_runs("full", tree_map, cpu, options, ns.seconds + 300)
    for name, r in runs.items():
        say(
            f"  {name}: {r['readings_acked']} readings acknowledged in {r['wall_s']} s = "
            f"{r['readings_per_s']:,.0f} /s, {r['cpu_us_per_reading']} µs CPU/reading, "
            f"{r['write_bytes_per_reading']} B written/reading, p99 {r['latency']['p99_ms']} ms, "
            f"batches {r['batch_fill']} full, peak RSS {r['peak_rss_bytes'] / 1e6:.1f} MB"
        )
    gw = runs["gateway"]
    with benchlib.workdir("bench-naive-") as wd:
        say(f"naive baseline for {ns.naive_seconds:g} s on core {cpu}, in {wd}")
        nv = run_worker(
            [
                str(HERE / "naive.py"),
                "--port",
                str(port),
                "--workdir",
                str(wd),
                "--cpu",
                str(cpu),
                "--seconds",
                str(ns.naive_seconds),
            ],
            timeout=ns.naive_seconds + 120,
        )
    say(
        f"  naive: {nv['readings_acked']} readings in {nv['wall_s']} s = "
        f"{nv['readings_per_s']:,.0f} /s, {nv['cpu_us_per_reading']} µs CPU/reading, "
        f"{nv['write_bytes_per_reading']} B written/reading, p99 {nv['latency']['p99_ms']} ms"
    )
    ratio = round(gw["readings_per_s"] / nv["readings_per_s"], 1) if nv["readings_per_s"] else None
    say(f"  ratio: {ratio}x the naive baseline")
    vs = compare(
        runs,
        {
            "readings_per_s": ["readings_per_s"],
            "batch_fill": ["batch_fill"],
            "write_bytes_per_reading": ["write_bytes_per_reading"],
            "cpu_us_per_reading": ["cpu_us_per_reading"],
            "p99_ms": ["latency", "p99_ms"],
            "peak_rss_bytes": ["peak_rss_bytes"],
        },
    )
    targets = {
        "readings_per_s": target(gw["readings_per_s"], TARGET_READINGS_PER_S, True, "/s"),
        "ratio_to_naive": target(ratio, TARGET_RATIO, True, "x"),
        "write_bytes_per_reading": target(
            gw["write_bytes_per_reading"], TARGET_BYTES_PER_READING, False, "B"
        ),
        "batch_fill": target(gw["batch_fill"], TARGET_BATCH_FILL, True, ""),
        "peak_rss_bytes": target(gw["peak_rss_bytes"], TARGET_PEAK_RSS, False, "B"),
        "all_acked": {"value": gw["all_acked"], "target": "true", "pass": gw["all_acked"]},
    }
    say_targets("full", targets)
    out: dict[str, Any] = {"gateway": gw, "naive": nv, "ratio_to_naive": ratio}
    if "baseline" in runs:
        out.update(baseline=runs["baseline"], vs_baseline=vs)
    out["targets"] = targets
    return out


def mode_realistic(
    ns: argparse.Namespace, cpu: int, port: int, tree_map: dict[str, Path | None]
) -> dict[str, Any]:
    say(f"realistic: the Gateway for {REALISTIC_SETTLE_S:g} s + {ns.minutes:g} min on core {cpu}")

    options = ["--port", str(port), "--minutes", str(ns.minutes)]
    timeout = ns.minutes * 60 + REALISTIC_SETTLE_S + 300
    runs = gateway_runs("realistic", tree_map, cpu, options, timeout)
    for name, r in runs.items():
        say(
            f"  {name}: {r['write_bytes']} B written in {r['window_s']} s = "
            f"{r['write_bytes_per_hour'] / 1e6:.2f} MB/h, {r['commits_in_window']} commits "
            f"({r['commits_per_hour']}/h; {r['readings_durable_in_window']} readings durable, "
            f"{r['batches_sealed_in_window']} batches sealed in the window)"
        )
    gw = runs["gateway"]
    with benchlib.workdir("bench-naive-") as wd:
        say(f"naive per-reading commit: {ns.naive_readings} readings (the rate does not matter)")
        nv = run_worker(
            [
                str(HERE / "naive.py"),
                "--port",
                str(port),
                "--workdir",
                str(wd),
                "--cpu",
                str(cpu),
                "--readings",
                str(ns.naive_readings),
                "--seconds",
                "600",
            ],
            timeout=600,
        )
    naive_per_hour = round(nv["write_bytes_per_reading"] * gw["readings_per_hour"])
    say(
        f"  naive: {nv['write_bytes_per_reading']:.0f} B/reading x {gw['readings_per_hour']} "
        f"readings/h = {naive_per_hour / 1e6:.1f} MB/h"
    )
    ratio = (
        round(naive_per_hour / gw["write_bytes_per_hour"], 1)
        if gw["write_bytes_per_hour"]
        else None
    )
    vs = compare(
        runs,
        {
            "write_bytes_per_hour": ["write_bytes_per_hour"],
            "commits_per_hour": ["commits_per_hour"],
            "write_bytes_per_commit": ["write_bytes_per_commit"],
        },
    )
    # One commit per interval at this load: a commit that only forgets acknowledged batches
    # would double the SD card's writes.
    max_commits = 3600.0 / gw["settings"]["commit_interval_s"]
    targets = {
        "write_bytes_per_hour": target(
            gw["write_bytes_per_hour"], TARGET_BYTES_PER_HOUR, False, "B/h"
        ),
        "commits_per_hour": target(gw["commits_per_hour"], max_commits, False, "/h"),
        "peak_rss_bytes": target(gw["peak_rss_bytes"], TARGET_PEAK_RSS, False, "B"),
    }
    say_targets("realistic", targets)
    out: dict[str, Any] = {
        "gateway": gw,
        "naive": {
            "write_bytes_per_reading": nv["write_bytes_per_reading"],
            "readings_measured": nv["readings_acked"],
            "write_bytes_per_hour": naive_per_hour,
        },
        "naive_over_gateway": ratio,
    }
    if "baseline" in runs:
        out.update(baseline=runs["baseline"], vs_baseline=vs)
    out["targets"] = targets
    return out


def mode_backlog(
    ns: argparse.Namespace, cpu: int, broker_cpus: set[int], tree_map: dict[str, Path | None]
) -> dict[str, Any]:
    say(
        f"backlog: {ns.backlog_readings:,} readings held while the broker is away, then the "
        f"broker returns; on core {cpu}, each run with its own mosquitto"
    )

    options = [
        *("--broker-cpus", ",".join(map(str, sorted(broker_cpus)))),
        *("--backlog-readings", str(ns.backlog_readings), "--drain-timeout", str(ns.drain_timeout)),
    ]
    runs = gateway_runs("backlog", tree_map, cpu, options, ns.drain_timeout + 600)
    for name, r in runs.items():
        say(
            f"  {name}: {r['readings_acked']:,} of {r['readings']:,} acknowledged "
            f"{'' if r['drained'] else '(NOT drained) '}{r['drain_s']} s after reconnecting "
            f"({r['drain_readings_per_s']:,.0f} /s), {r['since_restart_s']} s after the broker "
            f"restarted (reconnect {r['reconnect_s']} s, outage {r['outage_s']} s); "
            f"{r['commits_in_drain']} commits, {r['batches_sealed_in_drain']} batches sealed"
        )
    gw = runs["gateway"]
    vs = compare(
        runs,
        {
            "drain_s": ["drain_s"],
            "drain_readings_per_s": ["drain_readings_per_s"],
            "since_restart_s": ["since_restart_s"],
            "commits_in_drain": ["commits_in_drain"],
        },
    )
    drain = gw["drain_s"] if gw["drained"] else None
    since = gw["since_restart_s"] if gw["drained"] else None
    targets = {
        "drain_s": target(drain, TARGET_DRAIN_S, False, "s"),
        "since_restart_s": target(since, TARGET_DRAIN_S, False, "s"),
        "empty_after": {"value": gw["empty_after"], "target": "true", "pass": gw["empty_after"]},
    }
    say_targets("backlog", targets)
    out: dict[str, Any] = {"gateway": gw}
    if "baseline" in runs:
        out.update(baseline=runs["baseline"], vs_baseline=vs)
    out["targets"] = targets
    return out


PARTS: dict[str, tuple[str, ...]] = {
    "full": ("full",),
    "realistic": ("realistic",),
    "backlog": ("backlog",),
    "all": ("full", "realistic", "backlog"),
}


def harness(ns: argparse.Namespace) -> int:
    cpu, broker_cpus = benchlib.choose_cpus() if ns.cpu is None else (ns.cpu, set())
    if not broker_cpus:
        broker_cpus = (set(os.sched_getaffinity(0)) - {cpu}) or {cpu}
    result: dict[str, Any] = {
        "bench": "pipeline",
        "mode": ns.mode,
        "machine": benchlib.machine(),
        "cpu_under_test": cpu,
        "broker_cpus": sorted(broker_cpus),
    }
    parts = PARTS[ns.mode]
    with trees(ns.baseline) as tree_map:
        result["tree"] = benchlib.describe(benchlib.REPO)
        if ns.baseline is not None:
            tree = tree_map["baseline"]
            assert tree is not None
            result["baseline"] = {"rev": ns.baseline, "commit": benchlib.describe(tree)}
        if "full" in parts or "realistic" in parts:
            with benchlib.workdir("bench-broker-") as bwd, benchlib.broker(bwd, broker_cpus) as b:
                say(f"mosquitto on port {b.port}, cores {sorted(broker_cpus)}")
                if "full" in parts:
                    result["full"] = mode_full(ns, cpu, b.port, tree_map)
                if "realistic" in parts:
                    result["realistic"] = mode_realistic(ns, cpu, b.port, tree_map)
        if "backlog" in parts:
            result["backlog"] = mode_backlog(ns, cpu, broker_cpus, tree_map)
    verdicts = {
        f"{part}.{name}": t["pass"]
        for part in ("full", "realistic", "backlog")
        if part in result
        for name, t in result[part]["targets"].items()
    }
    return benchlib.finish(result, verdicts)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mode", choices=tuple(PARTS), default="full")
    p.add_argument(
        "--baseline",
        metavar="REV",
        default=None,
        help="also run every gateway worker on git commit REV (a temporary worktree)",
    )
    p.add_argument("--seconds", type=float, default=10.0, help="full speed: feeding time")
    p.add_argument("--readings", type=int, default=10**9, help="full speed: stop after this many")
    p.add_argument(
        "--window",
        type=int,
        default=7500,
        help="full speed: most readings accepted but not yet acknowledged (default: one batch "
        "less than the spool seals ahead: 8 in flight x 2 x 500 - 500)",
    )
    p.add_argument(
        "--stop-at-once",
        action="store_true",
        help="full speed: stop the daemon right after feeding, even with a commit in flight",
    )
    p.add_argument("--naive-seconds", type=float, default=5.0, help="naive baseline run time")
    p.add_argument(
        "--naive-readings",
        type=int,
        default=2000,
        help="realistic: readings the naive per-reading commit writes to measure it",
    )
    p.add_argument("--minutes", type=float, default=3.0, help="realistic: measuring window")
    p.add_argument(
        "--backlog-readings",
        type=int,
        default=BACKLOG_READINGS,
        help="backlog: readings held while the broker is away",
    )
    p.add_argument(
        "--drain-timeout",
        type=float,
        default=900.0,
        help="backlog: give up waiting for the drain after this long (then 'drained': false)",
    )
    p.add_argument("--cpu", type=int, default=None, help="core for the gateway (default: last)")
    p.add_argument("--worker", choices=("full", "realistic", "backlog"), help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, help=argparse.SUPPRESS)
    p.add_argument("--workdir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--broker-cpus", help=argparse.SUPPRESS)
    ns = p.parse_args()
    if ns.worker is None:
        return harness(ns)

    benchlib.pin(ns.cpu)
    logging.basicConfig(
        level=logging.WARNING,
        stream=sys.stderr,
        format="  [worker] %(levelname)s %(name)s: %(message)s",
    )
    if ns.worker == "full":
        res = asyncio.run(
            full_speed(ns.workdir, ns.port, ns.seconds, ns.readings, ns.window, ns.stop_at_once)
        )
    elif ns.worker == "backlog":
        cpus = {int(c) for c in ns.broker_cpus.split(",")}
        res = asyncio.run(backlog(ns.workdir, cpus, ns.backlog_readings, ns.drain_timeout))
    else:
        with contextlib.suppress(KeyboardInterrupt):
            res = asyncio.run(realistic(ns.workdir, ns.port, ns.minutes))
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
