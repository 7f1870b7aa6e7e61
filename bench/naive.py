"""The naive baseline: what a gateway does without grouping anything.

Per reading: JSON, an Ed25519 signature, INSERT + COMMIT into SQLite (WAL, synchronous=FULL, as
the real spool), publish with QoS 1 and wait for the PUBACK, DELETE + COMMIT. The readings are
the same as the real pipeline's (the simulated sensor, kind "all", judged by the "ranges"
module). Run by bench/pipeline.py in its own process; also runnable alone:

    python bench/naive.py --port 1884 --workdir /var/tmp/x --seconds 5

Prints one JSON line with its figures on stdout.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import threading
import time
from pathlib import Path
from typing import Any

import benchlib
from benchlib import Counters, LatencyHistogram


def run(workdir: Path, port: int, seconds: float, max_readings: int) -> dict[str, Any]:
    import paho.mqtt.client as mqtt
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from drivers.simulated import SimulatedSensor
    from gateway.core.health import Health
    from gateway.core.reading import Reading
    from gateway.modules.chain import ModuleChain
    from gateway.modules.ranges import RangeModule

    benchlib.check_disk(workdir)
    db = sqlite3.connect(workdir / "naive.db", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("PRAGMA journal_size_limit=4194304")
    db.execute("CREATE TABLE IF NOT EXISTS outbox(id INTEGER PRIMARY KEY, body BLOB)")

    key = Ed25519PrivateKey.generate()
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="naive-bench", protocol=mqtt.MQTTv5
    )
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    if not connected.wait(10):
        raise RuntimeError("naive: no connection to the broker")

    driver = SimulatedSensor(sensor_id="env", options={"kind": "all", "seed": 1})
    units = dict(driver.quantities)
    health = Health()
    chain = ModuleChain([RangeModule(module_id="physics", options={})], health=health)
    hist = LatencyHistogram()
    perf = time.perf_counter

    start = Counters.now(perf)
    deadline = start.wall + seconds
    t_sim = time.time()
    n = 0
    while n < max_readings and perf() < deadline:
        t_sim += 0.001
        readings = [
            Reading("env", m.quantity, units[m.quantity], m.value, t_sim, True, 0.0, list(m.flags))
            for m in driver.read(t_sim)
        ]
        chain.judge(readings)
        for r in readings:
            if n >= max_readings:
                break
            t0 = perf()
            doc = json.dumps(
                {
                    "n": r.name,
                    "u": r.unit,
                    "v": r.value,
                    "t": r.t,
                    "score": r.score,
                    "flags": r.flags,
                },
                separators=(",", ":"),
            ).encode()
            body = json.dumps(
                {"payload": doc.decode(), "sig": key.sign(doc).hex()}, separators=(",", ":")
            ).encode()
            rowid = db.execute("INSERT INTO outbox(body) VALUES (?)", (body,)).lastrowid
            info = client.publish("depin/naive/reading", body, qos=1)
            info.wait_for_publish(30)
            if not info.is_published():
                raise RuntimeError("naive: no PUBACK within 30 s")
            hist.add(perf() - t0)
            db.execute("DELETE FROM outbox WHERE id = ?", (rowid,))
            n += 1
    end = Counters.now(perf)
    client.disconnect()
    client.loop_stop()
    db.close()
    d = end.since(start)
    return {
        "readings_acked": n,
        "wall_s": round(d["wall_s"], 3),
        "readings_per_s": round(n / d["wall_s"], 1),
        "cpu_us_per_reading": round(d["cpu_s"] / n * 1e6, 2),
        "cpu_utilisation": round(d["cpu_s"] / d["wall_s"], 3),
        "write_bytes": d["write_bytes"],
        "write_bytes_per_reading": round(d["write_bytes"] / n, 1),
        "latency": hist.summary_ms(),
        "peak_rss_bytes": benchlib.peak_rss_bytes(),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--readings", type=int, default=10**9)
    p.add_argument("--cpu", type=int, default=None)
    ns = p.parse_args()
    benchlib.pin(ns.cpu)
    ns.workdir.mkdir(parents=True, exist_ok=True)
    print(json.dumps(run(ns.workdir, ns.port, ns.seconds, ns.readings)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
