"""Faults where they happen in life: power cuts (SIGKILL), a broker outage, a full spool.

The gateway runs as a real subprocess against a real mosquitto; an independent subscriber holds
what arrived. "Durable" is what the gateway itself reported at debug level after each commit.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from gateway.wire import payloads
from tests.brokers import Mosquitto
from tests.collector import Collector, assert_unbroken_chain, unique_batches
from tests.gatewayproc import GatewayProcess, write_config
from tests.received import all_arrived, received_readings

pytestmark = pytest.mark.slow


def test_power_cut_20_times_loses_nothing(tmp_path: Path, mosquitto: Mosquitto) -> None:
    collector = Collector(mosquitto.port)
    gw = GatewayProcess(write_config(tmp_path / "gw", mosquitto.port), tmp_path / "gw.log")
    rng = random.Random(20261125)
    try:
        for n in range(22):
            gw.start()
            # Cut the power at a random moment once the spool is open (startup itself takes
            # longer on a loaded machine, and a cut before the spool opens tests nothing).
            deadline = time.monotonic() + 20
            while gw.log.read_text().count("spool ") <= n and time.monotonic() < deadline:
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 1.6))
            gw.kill()
        gw.start()
        assert gw.wait_log("connected to", 20)
        time.sleep(2)
        assert gw.terminate() == 0
        # Every start got as far as opening its spool (no run died of something else).
        assert gw.log.read_text().count("spool ") >= 23
        durable = gw.durable()
        assert len(durable) > 1000

        assert collector.wait_for(lambda: all_arrived(collector, durable), 30), (
            "durable readings missing at the subscriber"
        )
        batches = unique_batches(collector.batches())
        got = received_readings(batches)
        assert set(durable) <= set(got)
        # Exactly once: no reading sits in two different batches.
        assert max(got.values()) == 1
        assert_unbroken_chain(batches)
    finally:
        collector.close()
        if gw.running():
            gw.kill()


def test_broker_outage_of_30_s_loses_nothing_and_drains_oldest_first(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    collector = Collector(mosquitto.port)
    gw = GatewayProcess(write_config(tmp_path / "gw", mosquitto.port), tmp_path / "gw.log")
    try:
        gw.start()
        assert gw.wait_log("connected to", 20)
        time.sleep(2)
        before = len(unique_batches(collector.batches()))
        assert before > 0
        mosquitto.stop()
        time.sleep(30)
        assert gw.running()
        mosquitto.start()
        assert collector.wait_for(lambda: collector.client.is_connected(), 20)
        time.sleep(5)
        assert gw.terminate() == 0
        durable = gw.durable()

        assert collector.wait_for(lambda: all_arrived(collector, durable), 30), (
            "readings lost over the outage"
        )
        batches = unique_batches(collector.batches())
        assert_unbroken_chain(batches)
        # Oldest first: in order of first arrival, seqs only go up.
        seqs = [s for s, _, _ in batches]
        assert seqs == sorted(seqs)
        assert max(received_readings(batches).values()) == 1
        # The backlog really was a backlog: readings taken during the outage arrived.
        outage = [b for _, _, b in batches[before:] if b.sealed - b.records[0][payloads.T] > 5]
        assert outage, "no batch carried readings from the outage"
    finally:
        collector.close()
        if gw.running():
            gw.kill()


def test_spool_cap_drops_oldest_with_receipt_and_keeps_running(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    mosquitto.stop()  # the broker is away while the spool fills
    cfg = write_config(
        tmp_path / "gw",
        mosquitto.port,
        spool='max_size = "64 KiB"',
        extra_uplink="max_inflight = 1",
        interval="0.02 s",
    )
    gw = GatewayProcess(cfg, tmp_path / "gw.log")
    collector: Collector | None = None
    try:
        gw.start()
        assert gw.wait_log("spool full: dropped", 30), "the cap was never reached"
        time.sleep(1)
        assert gw.running()
        mosquitto.start()
        collector = Collector(mosquitto.port)
        assert gw.wait_log("connected to", 20)
        c = collector

        def receipts() -> list[dict[str, object]]:
            return [d for _, _, b in unique_batches(c.batches()) for d in b.dropped]

        assert collector.wait_for(lambda: receipts(), 20), "no drop receipt arrived"
        time.sleep(2)
        assert gw.running(), "the gateway stopped when the spool was full"
        assert gw.terminate() == 0
        durable = gw.durable()

        def settled() -> bool:
            got = received_readings(unique_batches(c.batches()))
            dropped = sum(int(d["n"]) for d in receipts())  # type: ignore[call-overload]
            return len(got) + dropped >= len(durable)

        assert collector.wait_for(settled, 20)
        batches = unique_batches(collector.batches())
        got = received_readings(batches)
        lost = [d for d in durable if d not in got]
        recs = receipts()
        assert recs and all(r["why"] == "spool-full" for r in recs)
        # The receipts account for exactly the readings that never arrived...
        assert sum(int(r["n"]) for r in recs) == len(lost)  # type: ignore[call-overload]
        # ...and say when: every lost reading lies inside a receipt's [from, to].
        spans = [(float(r["from"]), float(r["to"])) for r in recs]  # type: ignore[arg-type]
        assert all(any(a <= t <= b for a, b in spans) for _, t in lost)
        # The oldest went: nothing lost is newer than the newest reading that arrived.
        assert max(t for _, t in lost) < max(t for _, t in got)
        assert_unbroken_chain(batches)
    finally:
        if collector:
            collector.close()
        if gw.running():
            gw.kill()


def test_sigterm_with_the_broker_away_exits_in_bounded_time_and_keeps_everything(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    mosquitto.stop()
    cfg = write_config(tmp_path / "gw", mosquitto.port)
    gw = GatewayProcess(cfg, tmp_path / "gw.log")
    gw.start()
    assert gw.wait_log("Connection refused", 20)
    time.sleep(1.5)
    t0 = time.monotonic()
    assert gw.proc is not None
    gw.proc.send_signal(15)
    assert gw.proc.wait(30) == 0
    # --shutdown-timeout defaults to 10 s: waiting for the broker is bounded. Never connected,
    # the gateway sealed nothing (it reads its chain head on the broker first): the readings
    # wait unsealed, and it says so.
    assert time.monotonic() - t0 < 14
    assert "readings stay in the spool unsealed" in gw.log.read_text()
    durable = gw.durable()
    # Next start with the broker back: everything arrives.
    mosquitto.start()
    collector = Collector(mosquitto.port)
    try:
        gw.start()
        assert gw.wait_log("connected to", 20)

        assert collector.wait_for(lambda: all_arrived(collector, durable), 20)
        assert gw.terminate() == 0
        assert_unbroken_chain(unique_batches(collector.batches()))
    finally:
        collector.close()
        if gw.running():
            gw.kill()
