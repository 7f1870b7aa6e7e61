"""Home Assistant discovery against a real broker: the gateway announces itself, removes the
entities of a sensor dropped from its configuration, leaves other devices alone, and announces
again when Home Assistant says it is back online."""

from __future__ import annotations

import json
from pathlib import Path

from gateway import __version__, homeassistant, identity
from tests.brokers import Mosquitto
from tests.collector import Collector
from tests.gatewayproc import GatewayProcess, write_config

OTHER = "z6MkotherDeviceOtherDeviceOtherDeviceOtherDevic"


def _configs(collector: Collector, device_id: str) -> list[tuple[str, bytes]]:
    node = homeassistant.node_id(device_id)
    return [
        (m.topic, m.payload)
        for m in collector.messages
        if m.topic.startswith("homeassistant/") and f"/{node}/" in m.topic
    ]


def test_discovery_announces_removes_dropped_and_reannounces(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    cfg = write_config(tmp_path / "gw", mosquitto.port, interval="0.2 s")
    device = identity.load(tmp_path / "gw" / "device.key").device_id
    node = homeassistant.node_id(device)
    dropped = f"homeassistant/sensor/{node}/oldsensor-temperature/config"
    foreign = f"homeassistant/sensor/{homeassistant.node_id(OTHER)}/climate-temperature/config"
    setup = Collector(mosquitto.port, topic="nothing/#", client_id="setup")
    for topic in (dropped, foreign):  # left retained by an earlier configuration / gateway
        setup.client.publish(
            topic, json.dumps({"name": "old"}), qos=1, retain=True
        ).wait_for_publish()
    setup.close()
    collector = Collector(mosquitto.port, topic="homeassistant/#", client_id="ha")
    gw = GatewayProcess(cfg, tmp_path / "gw.log")
    try:
        gw.start()
        # The gateway's own entities (queue, age, anomaly rate, score, online), and one per
        # quantity of the simulated sensor.
        gateway_entities = set(
            homeassistant.discovery(
                device_id=device, name="x", version=__version__, prefix="depin/v1", sensors=[]
            )
        )

        def announced() -> bool:
            got = {t for t, p in _configs(collector, device) if p}
            return gateway_entities <= got and any("env-temperature" in t for t in got)

        assert collector.wait_for(announced, 20), gw.log.read_text()[-2000:]
        assert collector.wait_for(lambda: (dropped, b"") in _configs(collector, device), 10), (
            "the dropped sensor's entity was not removed"
        )
        before = len(_configs(collector, device))
        collector.client.publish("homeassistant/status", b"online", qos=1)
        assert collector.wait_for(lambda: len(_configs(collector, device)) > before + 5, 10)
        assert gw.terminate() == 0
    finally:
        collector.close()
        if gw.running():
            gw.kill()
    # Never another device's topics.
    assert all(m.payload for m in collector.messages if m.topic == foreign)
    # Every config names this device and is valid JSON with a stable unique id.
    configs = {t: json.loads(p) for t, p in _configs(collector, device) if p}
    temp = configs[f"homeassistant/sensor/{node}/env-temperature/config"]
    assert temp["device_class"] == "temperature" and temp["unit_of_measurement"] == "°C"
    assert temp["state_topic"] == f"depin/v1/{device}/state"
    assert temp["availability_topic"] == f"depin/v1/{device}/status"
    assert temp["unique_id"] == f"depin-{device}-env-temperature"
    pm = configs[f"homeassistant/sensor/{node}/env-pm2_5/config"]
    assert pm["device_class"] == "pm25" and pm["unit_of_measurement"] == "\u00b5g/m\u00b3"
