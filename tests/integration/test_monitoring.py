"""What owners watch over MQTT: the retained state mirror and the health message (spec §8),
from a real gateway process through a real mosquitto."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from gateway.wire import cose, dcbor, identity, merkle
from tests import make_batches as mb
from tests.brokers import Mosquitto
from tests.collector import Collector
from tests.gatewayproc import GatewayProcess, write_config


def _latest(collector: Collector, suffix: str) -> dict[str, Any] | None:
    found = [m for m in collector.messages if m.topic.endswith(suffix) and m.payload]
    return json.loads(found[-1].payload) if found else None


def test_state_and_health_are_published_and_carry_the_attestation(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    attestor = mb.identity(mb.SEED_B)
    cfg = write_config(tmp_path / "gw", mosquitto.port, interval="0.2 s")
    with cfg.open("a") as f:
        f.write('\n[monitor]\nstate_interval = "1 s"\nhealth_interval = "1 s"\n')
        f.write(f'attestors = ["{attestor.did}"]\n')
    device = identity.load(tmp_path / "gw" / "device.key")
    collector = Collector(mosquitto.port)
    gw = GatewayProcess(cfg, tmp_path / "gw.log")
    try:
        gw.start()
        assert collector.wait_for(lambda: _latest(collector, "/health") is not None, 20)

        def state_with_values() -> bool:
            s = _latest(collector, "/state")
            return bool(s and s["sensors"].get("env", {}).get("temperature", {}).get("v"))

        assert collector.wait_for(state_with_values, 20)
        first = _latest(collector, "/state")
        assert collector.wait_for(lambda: _latest(collector, "/state") != first, 10)
        # An attestor's signed score about this device shows in the next health message.
        payload = dcbor.dumps({1: attestor.did, 2: device.did, 3: 0, 4: 3600, 5: 100, 6: 90,
                               7: 3, 8: "ok", 9: 0.873, 10: merkle.root([])})  # fmt: skip
        collector.client.publish(
            f"depin/v1/{device.device_id}/attestation",
            cose.sign1(attestor, cose.TYP_ATTESTATION, payload),
            qos=1,
            retain=True,
        )

        def attested() -> bool:
            h = _latest(collector, "/health")
            return bool(h and h.get("attestation") and h.get("last_seq") is not None)

        assert collector.wait_for(attested, 15)
        assert gw.terminate() == 0
    finally:
        collector.close()
        if gw.running():
            gw.kill()
    state = _latest(collector, "/state")
    assert state is not None and state["device"] == device.device_id
    assert state["name"] == "test-gateway"
    temp = state["sensors"]["env"]["temperature"]
    assert temp["u"] == "Cel" and isinstance(temp["v"], float) and isinstance(temp["af"], list)
    assert set(state["sensors"]["env"]) >= {"temperature", "humidity", "pressure", "pm2_5"}
    health = _latest(collector, "/health")
    assert health is not None
    assert health["attestation"]["score"] == 0.873
    assert health["attestation"]["attestor"] == attestor.did
    assert health["readings"] > 0 and health["uptime_s"] > 0
    assert isinstance(health["last_seq"], int) and health["last_seq"] >= 0
    assert health["memory_rss_bytes"] > 10_000_000
    assert [m["name"] for m in health["modules"]] == ["ranges"]
    assert 0.0 <= health["anomaly_rate"] <= 1.0
    for key in ("queue_depth", "oldest_unsent_age_s", "batches_sealed", "batches_acked",
                "sensor_errors", "module_errors", "clock", "version"):  # fmt: skip
        assert key in health
    retained = [m for m in collector.messages if m.topic.endswith(("/state", "/health"))]
    assert retained and all(m.payload for m in retained)


def test_an_attestation_about_another_device_forged_or_by_an_untrusted_key_is_ignored() -> None:
    from gateway.monitor.report import read_attestation

    a, other = mb.identity(mb.SEED_B), mb.identity(mb.SEED_A)
    trusted = [a.did]
    good = dcbor.dumps({1: a.did, 2: other.did, 3: 0, 4: 1, 5: 1, 6: 1, 7: 0, 8: "ok", 9: 1.0,
                        10: merkle.root([])})  # fmt: skip
    message = cose.sign1(a, cose.TYP_ATTESTATION, good)
    assert read_attestation(message, other.did, trusted) is not None
    assert read_attestation(message, a.did, trusted) is None  # about someone else
    # Valid and about this device, but by a key the owner did not name, or with none named.
    assert read_attestation(message, other.did, [other.did]) is None
    assert read_attestation(message, other.did, []) is None
    forged = bytearray(message)
    forged[-1] ^= 1
    assert read_attestation(bytes(forged), other.did, trusted) is None
    assert read_attestation(b"garbage", other.did, trusted) is None
    batch = mb.Chain(ident=other).next().message  # a batch is not an attestation
    assert read_attestation(batch, other.did, trusted) is None


def test_status_shows_sensors_queue_uplink_and_chain(
    tmp_path: Path, mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(run))
    cfg = write_config(tmp_path / "gw", mosquitto.port, interval="0.2 s")
    with cfg.open("a") as f:
        f.write('\n[monitor]\nstate_interval = "1 s"\nhealth_interval = "1 s"\n')
    gw = GatewayProcess(cfg, tmp_path / "gw.log")

    def status(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "status", "-c", str(cfg), *extra],
            capture_output=True,
            text=True,
            timeout=30,
        )

    try:
        gw.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(
            want in status().stdout for want in ("connected to", "last sealed batch seq")
        ):
            time.sleep(0.3)
        out = status().stdout
        facts = json.loads(status("--json").stdout)
        mosquitto.stop()  # the owner sees the uplink go down, and the queue grow
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and "NOT connected" not in status().stdout:
            time.sleep(0.3)
        down = status().stdout
        assert gw.terminate() == 0
    finally:
        if gw.running():
            gw.kill()
    device = identity.load(tmp_path / "gw" / "device.key")
    assert f"device {device.did}" in out
    assert "env/temperature" in out and " Cel " in out
    assert f"connected to 127.0.0.1:{mosquitto.port}" in out
    assert "last sealed batch seq" in out
    assert facts["spool"]["did"] == device.did and facts["status"]["health"]["readings"] > 0
    assert "NOT connected" in down and "sealed batches" in down
    # Stopped: the spool still tells what waits for the broker.
    after = status().stdout
    assert "waiting for the broker" in after


@pytest.mark.parametrize(
    "changes",
    [{3: float("nan")}, {5: 10**5000}, {8: {1: "x", "a": 2}}, {9: float("inf")}, {9: 1.5}],
    ids=["nan-epoch", "huge-int", "map-status", "inf-score", "score-above-1"],
)
def test_an_odd_attestation_never_reaches_health(changes: dict[int, Any]) -> None:
    """Anyone can sign an attestation: only the documented fields and ranges are taken, so the
    health message (strict JSON) can always be built."""
    import sys as _sys

    from gateway.core.health import Health
    from gateway.monitor.report import HealthReport, read_attestation

    limit = _sys.get_int_max_str_digits()
    _sys.set_int_max_str_digits(0)  # let cbor2 encode the huge integer at all
    a, dev = mb.identity(mb.SEED_B), mb.identity(mb.SEED_A)
    fields = {1: a.did, 2: dev.did, 3: 0, 4: 1, 5: 1, 6: 1, 7: 0, 8: "ok", 9: 1.0,
              10: merkle.root([])}  # fmt: skip
    fields.update(changes)
    import cbor2

    try:
        message = cose.sign1(a, cose.TYP_ATTESTATION, cbor2.dumps(fields))
        found = read_attestation(message, dev.did, [a.did])
    finally:
        _sys.set_int_max_str_digits(limit)
    assert found is None
    health = Health()
    health.attestation = found
    HealthReport.to_json(
        HealthReport(device_id="d", name="n", version="v").build(health, modules=[])
    )


def _attested(signer: Any, about: str, start: int, score: float, revision: int | None) -> bytes:
    fields: dict[int, Any] = {1: signer.did, 2: about, 3: start, 4: start + 3600, 5: 1, 6: 1,
                              7: 0, 8: "ok", 9: score, 10: merkle.root([])}  # fmt: skip
    if revision is not None:
        fields[11] = revision
    return cose.sign1(signer, cose.TYP_ATTESTATION, dcbor.dumps(fields))


def test_a_superseded_attestation_replayed_does_not_change_what_health_shows(
    tmp_path: Path,
) -> None:
    """Anyone can republish what an attestor once published: health keeps the attestor's latest
    word, by epoch start and then revision (key 11, absent: 0)."""
    import asyncio
    from typing import cast

    from gateway.config.settings import load
    from gateway.core.health import Health
    from gateway.device.publisher import StatePublisher
    from gateway.monitor.report import HealthReport, StateMirror, read_attestation

    a = mb.identity(mb.SEED_B)
    cfg_path = write_config(tmp_path / "gw", 1883)
    with cfg_path.open("a") as f:
        f.write(f'\n[monitor]\nattestors = ["{a.did}"]\n')
    cfg = load(cfg_path)
    device = identity.load(tmp_path / "gw" / "device.key")
    health = Health()
    publisher = StatePublisher(
        cfg,
        mirror=StateMirror(device.device_id, "n"),
        identity=device,
        broker=cast(Any, None),  # the attestation topic's handler publishes nothing
        health=health,
        spool=cast(Any, None),
        judge=cast(Any, None),
    )
    topic = f"depin/v1/{device.device_id}/attestation"

    def receive(message: bytes) -> float | None:
        asyncio.run(publisher.attestation(topic, message))
        shown = health.attestation
        HealthReport.to_json({"attestation": shown})
        return None if shown is None else float(shown["score"])

    first = _attested(a, device.did, 3600, 0.5, None)
    found = read_attestation(first, device.did, [a.did])
    assert found is not None and (found["epoch_start"], found["revision"]) == (3600, 0)
    assert receive(first) == 0.5
    assert receive(_attested(a, device.did, 3600, 1.0, 1)) == 1.0  # a revision of that epoch
    assert receive(first) == 1.0  # revision 0 (no key 11) replayed
    assert receive(_attested(a, device.did, 3600, 0.25, 1)) == 1.0  # the same revision again
    assert receive(_attested(a, device.did, 7200, 0.75, None)) == 0.75  # the next epoch
    assert receive(_attested(a, device.did, 3600, 0.0, 5)) == 0.75  # an older epoch's, replayed
    assert health.ignored_messages["attestation"] == 3
