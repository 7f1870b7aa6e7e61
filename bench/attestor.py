"""The attestor benchmark: verified readings per second through `Worker.handle`.

    python bench/attestor.py                     # everything, 100 and 1,000 readings per batch
    python bench/attestor.py --readings 100000   # fewer readings per run (quicker, noisier)

Signed batches are built in advance (several registered devices, records like the gateway's,
each device's chain linked), then fed to `gateway.attestor.service.Worker.handle`: the full
path of one message, spec section 9 steps 1-4 (`examine`) and step 5 with storing
(`chains.process_batch`), each batch in its own transaction. Runs, at each batch size:

- baseline: the same messages through the signature check alone (`cose.verify1`), through
  `payloads.decode_batch` and its reference (`decode_batch_reference`), and through the
  stand-alone `gateway.wire.verify.Verifier` (steps 1-5, chain in memory, nothing stored);
- one worker on SQLite, one worker on PostgreSQL;
- two worker processes on one PostgreSQL database, splitting the batches as a shared
  subscription does (any batch to any worker, so a device's consecutive batches go to both
  workers), and, for comparison, split by device.

No MQTT: the broker's work (and paho's thread) is not the attestor's; `Worker.handle` is what
the worker loop calls for each message the broker delivered. Every run is a fresh subprocess
with a fresh store; one-worker runs are pinned to one core. Afterwards each store is checked:
every batch stored exactly once, every finding an accepted kind.

One JSON object on stdout (figures, targets with pass/fail, `pass`, `failed`); prose on stderr.
Exit code 0 when every target passed.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import pickle
import random
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import benchlib
from benchlib import say, target

HERE = Path(__file__).resolve().parent
if str(benchlib.REPO) not in sys.path:
    sys.path.insert(0, str(benchlib.REPO))

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: E402

from gateway.wire import cose, payloads  # noqa: E402
from gateway.wire.identity import Identity  # noqa: E402

# The target: per worker, at 1,000 readings per batch, on this machine.
TARGET_PER_WORKER = 100_000
TARGET_BATCH = 1000
SIZES = (100, 1000)
DEVICES = 6  # even, so "by device" splits them 3 + 3
ACCEPTED = frozenset({"valid", "gap", "reordered"})  # what the store keeps
PREFIX = "depin/v1"
SEALED0 = 1_767_225_600  # 2026-01-01T00:00:00Z
# (name, unit, start, step of the random walk, resolution): like drivers/simulated.py's "all"
QUANTITIES = [
    ("env/temperature", "Cel", 21.0, 0.05, 0.01),
    ("env/humidity", "%RH", 45.0, 0.2, 0.01),
    ("env/pressure", "Pa", 101_325.0, 3.0, 1.0),
    ("env/pm1", "ug/m3", 4.0, 0.3, 0.1),
    ("env/pm2_5", "ug/m3", 7.0, 0.4, 0.1),
    ("env/pm10", "ug/m3", 12.0, 0.6, 0.1),
    ("env/co2", "ppm", 600.0, 4.0, 1.0),
]
MODULES = [
    ("ranges", "1.0", hashlib.sha256(b"ranges").digest()),
    ("spikes", "1.2", hashlib.sha256(b"spikes").digest()),
]


def ident(n: int) -> Identity:
    seed = hashlib.sha256(b"bench-attestor-%d" % n).digest()
    return Identity.from_private_key(Ed25519PrivateKey.from_private_bytes(seed))


ATTESTOR = -1  # ident(ATTESTOR) signs attestations (none are made here)


# =============================================================================================
# The batches
# =============================================================================================


def build(size: int, batches_per_device: int, seed: int = 1) -> list[tuple[int, int, bytes]]:
    """(device, seq, message) in arrival order: round robin over the devices, seqs ascending.

    Records come from the production encoders (payloads.encode_record / encode_batch,
    cose.sign1): a random walk per quantity rounded to the sensor's resolution (so pressure and
    CO2 are integers, the rest have fractions), wall-clock times with fractions, anomaly
    scores, about 2% of readings flagged and 0.2% failed (no value, flag "sensor-error"); now
    and then a batch carries a drop receipt or was sealed without a synchronised clock."""
    rng = random.Random(seed)
    out: list[tuple[int, int, bytes]] = []
    chains: list[tuple[Identity, list[float], bytes]] = [
        (ident(d), [q[2] for q in QUANTITIES], payloads.ZERO_PREV) for d in range(DEVICES)
    ]
    boot = bytes(range(16))
    t = float(SEALED0)
    for seq in range(batches_per_device):
        for d, (dev, level, prev) in enumerate(chains):
            records = []
            for i in range(size):
                q = i % len(QUANTITIES)
                name, unit, _start, step, res = QUANTITIES[q]
                level[q] += rng.gauss(0.0, step)
                value: float | None = round(round(level[q] / res) * res, 2)
                t += 0.37 + rng.random() / 10
                score = round(rng.random() ** 4, 4)
                flags: list[str] = []
                r = rng.random()
                if r < 0.002:
                    value, flags = None, ["sensor-error"]
                elif r < 0.022:
                    flags = [rng.choice(("spike", "range", "stuck"))]
                    score = round(0.9 + rng.random() / 10, 4)
                records.append(payloads.encode_record(name, unit, value, t, score, flags))
            dropped = (
                [payloads.DropReceipt(3, t - 60, t - 30, "spool full")]
                if rng.random() < 0.02
                else []
            )
            payload, _root = payloads.encode_batch(
                did=dev.did,
                seq=seq,
                prev=prev,
                sealed=round(t, 3),
                records=records,
                clock_synced=rng.random() > 0.02,
                clock_source="ntp",
                modules=MODULES,
                dropped=dropped,
                boot=boot,
            )
            out.append((d, seq, cose.sign1(dev, cose.TYP_BATCH, payload)))
            chains[d] = (dev, level, hashlib.sha256(payload).digest())
    return out


def topic(d: int) -> str:
    return f"{PREFIX}/{ident(d).device_id}/batch"


def share(
    batches: list[tuple[int, int, bytes]], part: int, parts: int, split: str
) -> list[tuple[int, int, bytes]]:
    """The batches one of `parts` workers gets, in arrival order. "shared": as a shared
    subscription does, any batch to any worker; here device d's batch seq goes to worker
    (seq + d) % parts, so consecutive batches of a device go to different workers and each
    worker gets every device. "device": worker d % parts gets all of device d."""
    if split == "device":
        return [b for b in batches if b[0] % parts == part]
    return [b for b in batches if (b[1] + b[0]) % parts == part]


# =============================================================================================
# Measurements (each in its own subprocess)
# =============================================================================================


def _attestor_config(store: str, workdir: Path) -> Any:
    from gateway.attestor.config import loads

    return loads(
        f'[attestor]\nstore = "{store}"\nkey_file = "attestor.key"\n'
        '[broker]\nurl = "mqtt://127.0.0.1:1"\n',
        base_dir=workdir,
    )


def _proc_cpu(pid: int) -> float | None:
    """utime + stime of another process (a PostgreSQL backend), None when unreadable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_worker(ns: argparse.Namespace) -> dict[str, Any]:
    """Worker.handle over this worker's share of the batches; waits for "go" on stdin first
    when --sync is given (two workers start together). Readings are the records checked and
    stored (a failed reading, without a value, is one too)."""
    from gateway.attestor.service import Worker

    benchlib.pin(ns.cpu)
    batches = share(pickle.loads(ns.data.read_bytes()), ns.part, ns.parts, ns.split)
    w = Worker(_attestor_config(ns.store, ns.data.parent), ident(ATTESTOR), ns.part)
    backend = None
    if w.db.dialect == "postgresql":
        backend = int(w.db.execute("SELECT pg_backend_pid()").fetchone()[0])
    feed = [(topic(d), msg) for d, _seq, msg in batches]
    if ns.sync:
        print("ready", flush=True)
        sys.stdin.readline()
    cpu0, pg0 = benchlib.cpu_seconds(), _proc_cpu(backend) if backend else None
    t0 = time.monotonic()
    kinds: Counter[str] = Counter()
    readings = 0
    handle = w.handle
    for tp, msg in feed:
        f = handle(tp, msg)
        kinds[f.kind] += 1
        readings += f.records
    t1 = time.monotonic()
    cpu1, pg1 = benchlib.cpu_seconds(), _proc_cpu(backend) if backend else None
    w.db.close()
    wall = t1 - t0
    return {
        "start": t0,
        "end": t1,
        "wall_s": round(wall, 3),
        "cpu_s": round(cpu1 - cpu0, 3),
        "postgres_backend_cpu_s": (
            round(pg1 - pg0, 3) if pg0 is not None and pg1 is not None else None
        ),
        "batches": len(feed),
        "readings": readings,
        "readings_per_s": round(readings / wall),
        "ms_per_batch": round(wall / len(feed) * 1e3, 3),
        # what the worker's own code costs, whatever else runs on the machine
        "readings_per_cpu_s": round(readings / (cpu1 - cpu0)),
        "kinds": dict(kinds),
    }


def _rate(fn: Any, items: list[Any], readings: int, repeat: int = 3) -> dict[str, Any]:
    """Readings per second of `fn` over `items`, best of `repeat` passes (the others warm up)."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        for x in items:
            fn(x)
        best = min(best, time.perf_counter() - t0)
    return {
        "readings_per_s": round(readings / best),
        "ms_per_batch": round(best / len(items) * 1e3, 3),
    }


def measure_baseline(ns: argparse.Namespace) -> dict[str, Any]:
    """The same messages without a store: signature alone, decoding (fast and reference), the
    tag walk `examine` does, steps 1-4, and the in-memory Verifier (steps 1-5)."""
    from gateway.wire import verify

    benchlib.pin(ns.cpu)
    batches = pickle.loads(ns.data.read_bytes())
    messages = [m for _d, _s, m in batches]
    found = [verify.examine(m) for m in messages]
    assert all(isinstance(x, verify.Examined) for x in found), found[:1]
    bodies = [cose.verify1(m).payload for m in messages]
    n = sum(len(payloads.decode_batch(p).records) for p in bodies)
    ref = max(1, len(bodies) // 10)  # the reference is slow: a tenth of the batches
    n_ref = sum(len(payloads.decode_batch(p).records) for p in bodies[:ref])
    dids = [ident(d).did for d in range(DEVICES)]
    # a tree from before decode_batch had a fast path: its decode_batch is the reference
    reference = getattr(payloads, "decode_batch_reference", payloads.decode_batch)

    def verifier_pass() -> float:
        v = verify.Verifier(allowed_dids=dids)
        t0 = time.perf_counter()
        kinds = Counter(v.check(m).kind for m in messages)
        dt = time.perf_counter() - t0
        assert set(kinds) <= {"valid"}, kinds
        return dt

    best = min(verifier_pass() for _ in range(3))
    out: dict[str, Any] = {
        "signature_only": _rate(cose.verify1, messages, n),
        "decode_batch": _rate(payloads.decode_batch, bodies, n),
        "decode_batch_reference": _rate(reference, bodies[:ref], n_ref, 1),
        # verify.examine walks every payload for CBOR tags (verify.first_tag) after decoding
        "tag_walk": _rate(verify.first_tag, bodies, n),
        "examine": _rate(verify.examine, messages, n),
        "verifier_in_memory": {
            "readings_per_s": round(n / best),
            "ms_per_batch": round(best / len(messages) * 1e3, 3),
        },
    }
    out["decode_batch_over_reference"] = ratio(
        out["decode_batch"]["readings_per_s"], out["decode_batch_reference"]["readings_per_s"]
    )
    out["signature_share_of_verifier"] = ratio(
        out["signature_only"]["ms_per_batch"], out["verifier_in_memory"]["ms_per_batch"]
    )
    return out


# =============================================================================================
# Harness
# =============================================================================================


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    from tests.pg import database

    with database() as url:
        yield url


def prepare_store(store: str) -> None:
    from gateway.attestor import registry
    from gateway.attestor.db import Database

    db = Database(store)
    try:
        for d in range(DEVICES):
            registry.register(db, ident(d).did, f"bench-{d}", now=float(SEALED0))
    finally:
        db.close()


def check_store(store: str, batches: list[tuple[int, int, bytes]]) -> dict[str, Any]:
    """Every batch stored exactly once, nothing else; findings counted once per message."""
    from gateway.attestor.db import Database

    db = Database(store)
    try:
        rows = db.execute("SELECT did, seq, batch_id FROM batches").fetchall()
        counted = db.execute("SELECT coalesce(sum(n), 0) FROM counts").fetchone()[0]
        evidence = db.execute("SELECT count(*) FROM evidence").fetchone()[0]
    finally:
        db.close()
    stored = Counter((str(d), int(s), bytes(b)) for d, s, b in rows)
    sent = Counter(
        (ident(d).did, seq, hashlib.sha256(cose.verify1(m).payload).digest())
        for d, seq, m in batches
    )
    ok = stored == sent and int(counted) == len(batches) and int(evidence) == 0
    return {"stored_exactly_once": ok, "findings_counted": int(counted)}


def _cmd(ns: argparse.Namespace, *args: str) -> list[str]:
    return [sys.executable, str(HERE / "attestor.py"), *args]


def run_one(cmd: list[str]) -> dict[str, Any]:
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=1800)
    if out.stderr.strip():
        say(out.stderr.rstrip())
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def run_pair(cmds: list[list[str]]) -> list[dict[str, Any]]:
    """Start the workers, wait until each has loaded its batches and connected, then let them
    go at once."""
    procs = [
        subprocess.Popen(c, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for c in cmds
    ]
    try:
        for p in procs:
            assert p.stdout is not None
            line = p.stdout.readline()
            if line.strip() != "ready":
                raise RuntimeError(f"worker did not get ready: {line!r}")
        for p in procs:
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        results = []
        for p in procs:
            out, _ = p.communicate(timeout=1800)
            if p.returncode:
                raise RuntimeError(f"worker failed ({p.returncode})")
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


def one_size(ns: argparse.Namespace, size: int, workdir: Path, cpu: int) -> dict[str, Any]:
    per_device = max(4, ns.readings // size // DEVICES)
    say(f"\n{size} readings per batch: building {per_device * DEVICES} signed batches")
    t0 = time.perf_counter()
    batches = build(size, per_device)
    data = workdir / f"batches-{size}.pickle"
    data.write_bytes(pickle.dumps(batches))
    say(f"  built in {time.perf_counter() - t0:.1f} s ({len(data.read_bytes()) / 1e6:.1f} MB)")
    common = ["--data", str(data), "--cpu", str(cpu)]
    res: dict[str, Any] = {"batches": len(batches), "readings_per_batch": size}

    res["baseline"] = base = run_one(_cmd(ns, "--worker", "baseline", *common))
    say(
        f"  baseline: signature {base['signature_only']['readings_per_s']:,}/s, "
        f"decode {base['decode_batch']['readings_per_s']:,}/s "
        f"(reference {base['decode_batch_reference']['readings_per_s']:,}/s), "
        f"verifier in memory {base['verifier_in_memory']['readings_per_s']:,}/s"
    )

    def best(runs: list[dict[str, Any]], key: str) -> dict[str, Any]:
        """The fastest of the repeats, with every repeat's figure: other processes on the
        machine only ever slow a run down."""
        top = dict(max(runs, key=lambda r: r[key]))
        top[f"{key}_runs"] = [r[key] for r in runs]
        top["stored_exactly_once"] = all(r["stored_exactly_once"] for r in runs)
        return top

    def single(kind: str, store: Any) -> dict[str, Any]:
        runs = []
        for i in range(ns.repeat):
            with store(i) as url:
                prepare_store(url)
                load = os.getloadavg()[0]
                r = run_one(_cmd(ns, "--worker", "handle", "--store", url, *common))
                r.update(check_store(url, batches))
            del r["start"], r["end"]
            r["load_average_before"] = round(load, 2)
            runs.append(r)
        r = best(runs, "readings_per_s")
        r["over_verifier_in_memory"] = ratio(
            r["readings_per_s"], base["verifier_in_memory"]["readings_per_s"]
        )
        say(
            f"  1 worker, {kind}: {r['readings_per_s']:,} readings/s (runs: "
            f"{', '.join(f'{x:,}' for x in r['readings_per_s_runs'])}), {r['ms_per_batch']} "
            f"ms/batch, {r['readings_per_cpu_s']:,} per CPU second, stored once: "
            f"{r['stored_exactly_once']}"
        )
        return r

    @contextlib.contextmanager
    def sqlite_store(i: int) -> Iterator[str]:
        path = workdir / f"attestor-{size}-{i}.db"
        yield str(path)
        for p in workdir.glob(path.name + "*"):
            p.unlink()

    res["sqlite_1_worker"] = single("SQLite", sqlite_store)
    res["postgresql_1_worker"] = single("PostgreSQL", lambda _i: postgres())

    def pair(split: str) -> dict[str, Any]:
        with postgres() as url:
            prepare_store(url)
            load = os.getloadavg()[0]
            cmds = [
                _cmd(ns, "--worker", "handle", "--store", url, "--data", str(data),
                     "--part", str(i), "--parts", "2", "--split", split, "--sync")
                for i in range(2)
            ]  # fmt: skip
            workers = run_pair(cmds)
            check = check_store(url, batches)
        span = max(w["end"] for w in workers) - min(w["start"] for w in workers)
        total = sum(w["readings"] for w in workers)
        cpu = sum(w["cpu_s"] + (w["postgres_backend_cpu_s"] or 0) for w in workers)
        for w in workers:
            del w["start"], w["end"]
        return {
            "split": split,
            "workers": workers,
            "total_readings_per_s": round(total / span),
            "per_worker_readings_per_s": round(total / span / 2),
            "readings_per_cpu_s_with_postgres": round(total / cpu),
            "wall_s": round(span, 3),
            "load_average_before": round(load, 2),
            **check,
        }

    for split in ("shared", "device"):
        p = best([pair(split) for _ in range(ns.repeat)], "total_readings_per_s")
        res[f"postgresql_2_workers_{split}"] = p
        say(
            f"  2 workers, PostgreSQL, split {split}: {p['total_readings_per_s']:,} "
            f"readings/s in total (runs: "
            f"{', '.join(f'{x:,}' for x in p['total_readings_per_s_runs'])}), "
            f"{p['per_worker_readings_per_s']:,} per worker, stored once: "
            f"{p['stored_exactly_once']}"
        )
    res["postgresql_2_over_1"] = ratio(
        res["postgresql_2_workers_shared"]["total_readings_per_s"],
        res["postgresql_1_worker"]["readings_per_s"],
    )
    return res


def harness(ns: argparse.Namespace) -> int:
    cpu, _rest = benchlib.choose_cpus() if ns.cpu is None else (ns.cpu, set())
    result: dict[str, Any] = {
        "bench": "attestor",
        "machine": benchlib.machine(),
        "mqtt": False,
        "method": (
            "Worker.handle(topic, message) over batches built and signed in advance: examine "
            "(signature, did, registry, payload) and process_batch (chain decision and store, "
            "one transaction per batch). No MQTT broker or client: the broker's delivery is "
            "not the attestor's cost. One-worker runs are pinned to one core; the two workers "
            "are not pinned and share the machine's cores with the PostgreSQL server. Each "
            "store measurement runs --repeat times on a fresh store; the best run is reported "
            "(with every run's figure), as other processes only ever slow a run down."
        ),
        "cpu_under_test": cpu,
        "repeat": ns.repeat,
        "devices": DEVICES,
        "sizes": {},
    }
    with benchlib.workdir("bench-attestor-") as wd:
        for size in ns.sizes:
            result["sizes"][str(size)] = one_size(ns, size, wd, cpu)
    checks = {
        f"{size}.{run}": r.get("stored_exactly_once", True)
        for size, s in result["sizes"].items()
        for run, r in s.items()
        if isinstance(r, dict)
    }
    targets: dict[str, Any] = {}
    big = result["sizes"].get(str(TARGET_BATCH))
    if big is not None:
        unit = "readings/s per worker"
        targets["sqlite_1_worker"] = target(
            big["sqlite_1_worker"]["readings_per_s"], TARGET_PER_WORKER, True, unit
        )
        targets["postgresql_1_worker"] = target(
            big["postgresql_1_worker"]["readings_per_s"], TARGET_PER_WORKER, True, unit
        )
        targets["postgresql_2_workers_shared"] = target(
            big["postgresql_2_workers_shared"]["per_worker_readings_per_s"],
            TARGET_PER_WORKER,
            True,
            unit,
        )
    result["targets"] = targets
    verdicts = {f"target.{k}": t["pass"] for k, t in targets.items()}
    verdicts.update({f"stored_exactly_once.{k}": v for k, v in checks.items()})
    return benchlib.finish(result, verdicts)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--readings",
        type=int,
        default=300_000,
        help="readings per run and batch size (default 300000)",
    )
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="readings per batch")
    p.add_argument(
        "--repeat", type=int, default=3, help="runs of each store measurement; the best counts"
    )
    p.add_argument("--cpu", type=int, default=None, help="core for one-worker runs (default: last)")
    p.add_argument("--worker", choices=("baseline", "handle"), help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--store", help=argparse.SUPPRESS)
    p.add_argument("--part", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--parts", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument(
        "--split", choices=("shared", "device"), default="shared", help=argparse.SUPPRESS
    )
    p.add_argument("--sync", action="store_true", help=argparse.SUPPRESS)
    ns = p.parse_args()
    if ns.worker is None:
        return harness(ns)
    if ns.sync:
        ns.cpu = None  # two workers: the scheduler places them (and PostgreSQL)
    res = measure_baseline(ns) if ns.worker == "baseline" else measure_worker(ns)
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
