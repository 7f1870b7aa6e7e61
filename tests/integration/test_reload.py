"""SIGHUP while readings flow: the module chain changes, nothing is lost, batches name the
modules that judged them, and a broken file changes nothing."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.brokers import Mosquitto
from tests.collector import Collector, assert_unbroken_chain, unique_batches
from tests.gatewayproc import GatewayProcess, write_config
from tests.received import all_arrived, received_readings
from tests.snippets import SPIKES


def test_sighup_changes_the_chain_without_losing_a_reading(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    cfg = write_config(tmp_path / "gw", mosquitto.port)
    collector = Collector(mosquitto.port)
    gw = GatewayProcess(cfg, tmp_path / "gw.log")
    try:
        gw.start()
        assert gw.wait_log("connected to", 20)
        time.sleep(1.5)
        original = cfg.read_text()
        cfg.write_text(original + SPIKES)
        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGHUP)
        assert gw.wait_log("reload: modules now physics (ranges 1.0.0), spikes (spikes", 10)
        time.sleep(1.5)
        cfg.write_text(original + "[[module]]\nkind = 3\n")  # broken: must change nothing
        gw.proc.send_signal(signal.SIGHUP)
        assert gw.wait_log("reload refused", 10)
        time.sleep(1.5)
        assert gw.running()
        assert gw.terminate() == 0
        durable = gw.durable()

        assert collector.wait_for(lambda: all_arrived(collector, durable), 20)
    finally:
        collector.close()
        if gw.running():
            gw.kill()
    batches = unique_batches(collector.batches())
    assert_unbroken_chain(batches)
    assert max(received_readings(batches).values()) == 1
    names = [[m[0] for m in b.modules] for _, _, b in sorted(batches, key=lambda x: x[0])]
    assert names[0] == ["ranges"] and names[-1] == ["ranges", "spikes"]
    # Once changed, it stays changed (the broken file was refused): one switch, in seq order.
    switch = names.index(["ranges", "spikes"])
    assert all(n == ["ranges"] for n in names[:switch])
    assert all(n == ["ranges", "spikes"] for n in names[switch:])
