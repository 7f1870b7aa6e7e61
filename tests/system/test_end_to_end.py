"""Scores, flags, failed readings and the birth message, end to end through a real broker."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import cbor2

from gateway.wire import cose, payloads
from gateway.wire.identity import did_of
from tests.brokers import Mosquitto
from tests.collector import Collector, unique_batches
from tests.gatewayproc import GatewayProcess, write_config

FAULTY = """
[[sensor]]
id = "flaky"
driver = "simulated"
interval = "0.05 s"
kind = "climate"
seed = 9
faults = ["range", "dropout"]
fault_every = 10
"""


def test_flags_scores_and_failed_readings_reach_the_signed_batches(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    cfg = write_config(tmp_path / "gw", mosquitto.port)
    cfg.write_text(cfg.read_text().replace("[[module]]", FAULTY + "\n[[module]]"))
    collector = Collector(mosquitto.port)
    gw = GatewayProcess(cfg, tmp_path / "gw.log")
    try:
        gw.start()
        assert gw.wait_log("connected to", 20)
        time.sleep(4)
        assert gw.terminate() == 0
        assert collector.wait_for(lambda: len(collector.batches()) > 3, 10)
    finally:
        collector.close()
        if gw.running():
            gw.kill()
    records = [r for _, _, b in unique_batches(collector.batches()) for r in b.records]
    flaky = [r for r in records if r[payloads.N].startswith("flaky/")]
    healthy = [r for r in records if r[payloads.N].startswith("env/")]
    # A failed read: no value, flagged, still signed and counted.
    failed = [r for r in flaky if payloads.V not in r]
    assert failed and all(r[payloads.FLAGS] == ["sensor-error"] for r in failed)
    # A physically impossible value: scored certain, flagged "range".
    ranged = [r for r in flaky if "range" in r.get(payloads.FLAGS, [])]
    assert ranged and all(r[payloads.SCORE] == 1 for r in ranged)
    # Clean readings carry a score and no flags.
    assert all(payloads.FLAGS not in r and r[payloads.SCORE] == 0 for r in healthy)
    # The faulty sensor never held the healthy one back: same number of reads of each quantity.
    per_q = Counter(r[payloads.N] for r in healthy)
    assert len(set(per_q.values())) == 1 and min(per_q.values()) > 30
    # Every batch names the module that judged it.
    b = unique_batches(collector.batches())[0][2]
    assert [m[:2] for m in b.modules] == [["ranges", "1.0.0"]]


def test_birth_message_is_signed_retained_and_describes_the_gateway(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    gw = GatewayProcess(write_config(tmp_path / "gw", mosquitto.port), tmp_path / "gw.log")
    gw.start()
    try:
        assert gw.wait_log("connected to", 20)
        time.sleep(1)
        # A subscriber arriving later still gets birth and status: both are retained.
        late = Collector(mosquitto.port, client_id="late")
        assert late.wait_for(lambda: len(late.messages) >= 2, 5)
        retained = {m.topic.rsplit("/", 1)[1]: m for m in late.messages if m.retain}
        late.close()
    finally:
        gw.terminate()
    assert retained["status"].payload == b"online"
    s = cose.verify1(retained["birth"].payload)
    assert s.typ == cose.TYP_BIRTH
    birth = cbor2.loads(s.payload)
    assert birth[1] == did_of(s.public_key)
    assert birth[6] == [
        {
            "id": "env",
            "driver": "simulated",
            "interval": 0.05,
            "quantities": ["temperature", "humidity", "pressure", "pm1", "pm2_5", "pm10", "co2"],
        }
    ]
    assert birth[8] == 0 and len(birth[3]) == 16 and len(birth[5]) == 32
    # After a clean stop the retained status says offline.
    after = Collector(mosquitto.port, client_id="after")
    assert after.wait_for(lambda: any(m.topic.endswith("/status") for m in after.messages), 5)
    status = [m.payload for m in after.messages if m.topic.endswith("/status")]
    after.close()
    assert status == [b"offline"]


def test_last_will_says_offline_when_the_gateway_dies(tmp_path: Path, mosquitto: Mosquitto) -> None:
    gw = GatewayProcess(write_config(tmp_path / "gw", mosquitto.port), tmp_path / "gw.log")
    gw.start()
    try:
        assert gw.wait_log("connected to", 20)
    finally:
        gw.kill()  # no goodbye: only the broker's Last Will can tell
    watcher = Collector(mosquitto.port, client_id="watcher")
    try:

        def offline() -> bool:
            status = [m.payload for m in watcher.messages if m.topic.endswith("/status")]
            return status[-1:] == [b"offline"]

        assert watcher.wait_for(offline, 10)
    finally:
        watcher.close()
