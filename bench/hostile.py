"""The attestor under junk: honest batch latency and the attestor's memory.

    python bench/hostile.py                  # 20 s quiet, 20 s under 10 MiB/s of junk
    python bench/hostile.py --seconds 10 --junk-mib 10 --inbox-mib 64
    python bench/hostile.py --no-tcp-nodelay   # the broker as packaged, for comparison

A real mosquitto on a free loopback port, set up as docs/broker.md says (`set_tcp_nodelay
true`), and a real attestor process (`python -m
gateway.attestor run`, SQLite store, `inbox_bytes` as given). One registered device publishes
a signed batch of 100 readings every 50 ms; latency is publish -> stored (the batch's row in
the store, polled every 5 ms from another connection). Two phases of equal length: quiet, then
with a publisher process sending unsigned junk (random bytes in 256 KiB messages, QoS 0 and 1
alternating, on other devices' batch topics) at the given rate. The attestor's peak resident
set (VmHWM) is read at the end of each phase.

Targets: p99 under junk within 2x of the quiet p99; peak RSS under junk at most the configured
inbox bytes plus a constant (RSS_CONSTANT: the quiet attestor, the message being judged and
paho's buffer of the largest message a topic may carry).

One JSON object on stdout; prose on stderr. Exit code 0 when every target passed.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import benchlib
from benchlib import say, target

if str(benchlib.REPO) not in sys.path:
    sys.path.insert(0, str(benchlib.REPO))

import contextlib
import multiprocessing

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from gateway.attestor import registry
from gateway.attestor.db import Database
from tests import attestorproc, hostile
from tests import make_batches as mb
from tests.brokers import Mosquitto

MIB = 1024 * 1024
RSS_CONSTANT = 96 * MIB
PREFIX = "depin/v1"
JUNK_MESSAGE = 256 * 1024


def _peak(pid: int) -> int:
    return hostile.peak_rss(pid)


def _reset_peak(pid: int) -> None:
    # Writing 5 to clear_refs resets VmHWM (Linux): each phase gets its own peak.
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


def _junk(port: int, mib_per_s: float, stop: Any, sent: Any) -> None:
    """Junk at `mib_per_s`, from a process of its own: in the bench's process, its threads
    would take the interpreter from the honest publisher and the poll, and the latency measured
    would be the bench's own."""
    pub = mqtt.Client(CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    blob = os.urandom(JUNK_MESSAGE)
    interval = JUNK_MESSAGE / (mib_per_s * MIB)
    due = time.monotonic()
    n = 0
    try:
        while not stop.is_set():
            pub.publish(f"{PREFIX}/junk{n % 97}/batch", blob, qos=n % 2)
            n += 1
            sent.value += JUNK_MESSAGE
            due += interval
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
    finally:
        pub.loop_stop()
        pub.disconnect()


def _phase(
    port: int, store: Path, chain: mb.Chain, seconds: float, junk_mib: float, pid: int
) -> dict[str, Any]:
    stop = multiprocessing.Event()
    sent = multiprocessing.Value("q", 0)
    junk = multiprocessing.Process(target=_junk, args=(port, junk_mib, stop, sent), daemon=True)
    if junk_mib:
        junk.start()
        time.sleep(1.0)  # under way before the first honest batch
    _reset_peak(pid)
    pub = mqtt.Client(CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    con = sqlite3.connect(store, timeout=30)
    did = chain.ident.did
    latencies: list[float] = []
    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            b = chain.next([mb.record(i) for i in range(100)])
            t0 = time.monotonic()
            pub.publish(f"{PREFIX}/{chain.ident.device_id}/batch", b.message, qos=1)
            while True:
                row = con.execute(
                    "SELECT 1 FROM batches WHERE did = ? AND seq = ?", (did, b.seq)
                ).fetchone()
                if row is not None:
                    break
                if time.monotonic() - t0 > 30:
                    raise RuntimeError(f"batch {b.seq} not stored within 30 s")
                time.sleep(0.005)
            latencies.append(time.monotonic() - t0)
            time.sleep(max(0.0, 0.05 - (time.monotonic() - t0)))
    finally:
        stop.set()
        pub.loop_stop()
        pub.disconnect()
        con.close()
        if junk.is_alive():
            junk.join(10)
    elapsed = time.monotonic() - started
    q = statistics.quantiles(latencies, n=100)
    return {
        "batches": len(latencies),
        "p50_ms": round(q[49] * 1000, 2),
        "p99_ms": round(q[98] * 1000, 2),
        "junk_mib_per_s": round(sent.value / MIB / (elapsed + (1.0 if junk_mib else 0)), 2),
        "peak_rss_mib": round(_peak(pid) / MIB, 1),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0, help="length of each phase")
    p.add_argument("--junk-mib", type=float, default=10.0, help="junk rate, MiB per second")
    p.add_argument("--inbox-mib", type=int, default=64, help="the attestor's inbox_bytes")
    p.add_argument(
        "--no-tcp-nodelay",
        dest="tcp_nodelay",
        action="store_false",
        help="the broker as packaged (Nagle's algorithm on), not as docs/broker.md sets it up",
    )
    ns = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        # As docs/broker.md sets it up: without set_tcp_nodelay, mosquitto holds a small honest
        # batch written after a large junk message until the attestor's TCP ACK of the junk comes
        # (Nagle's algorithm against the receiver's delayed ACK): tens of ms on every such batch.
        extra = "allow_anonymous true\n" + ("set_tcp_nodelay true" if ns.tcp_nodelay else "")
        broker = Mosquitto(Path(tmp) / "broker", listener_extra=extra)
        broker.start()
        work = Path(tmp)
        store = work / "attestor.db"
        conf = attestorproc.write_config(
            work, broker.port, store, inbox_bytes=f"{ns.inbox_mib} MiB", tick="1 s"
        )
        chain = mb.Chain(ident=mb.identity(bytes([9]) * 32))
        db = Database(str(store))
        registry.register(db, chain.ident.did, "bench")
        db.close()
        log = work / "attestor.log"
        proc = attestorproc.start(
            conf, log, cwd=benchlib.REPO, env={"PYTHONPATH": str(benchlib.REPO)}
        )
        try:
            deadline = time.monotonic() + 20
            while b"connected to the broker" not in log.read_bytes():
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(log.read_text()[-2000:])
                time.sleep(0.1)
            say("quiet phase")
            quiet = _phase(broker.port, store, chain, ns.seconds, 0.0, proc.pid)
            say(f"junk phase at {ns.junk_mib} MiB/s")
            junk = _phase(broker.port, store, chain, ns.seconds, ns.junk_mib, proc.pid)
            alive = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(20)
            broker.stop()
    bound = ns.inbox_mib * MIB + RSS_CONSTANT
    targets = {
        "p99_under_junk": target(junk["p99_ms"], 2 * quiet["p99_ms"], False, "ms"),
        "peak_rss_under_junk": target(junk["peak_rss_mib"], bound / MIB, False, "MiB"),
    }
    result: dict[str, Any] = {
        "quiet": quiet,
        "junk": junk,
        "inbox_mib": ns.inbox_mib,
        "broker_tcp_nodelay": ns.tcp_nodelay,
        "rss_constant_mib": RSS_CONSTANT / MIB,
        "alive": alive,
        "targets": targets,
    }
    verdicts = {k: bool(t["pass"]) for k, t in targets.items()} | {"alive": alive}
    return benchlib.finish(result, verdicts)


if __name__ == "__main__":
    raise SystemExit(main())
