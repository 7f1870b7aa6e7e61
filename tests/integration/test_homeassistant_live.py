"""Home Assistant discovery against a real broker: the gateway announces itself, removes the
entities of a sensor dropped from its configuration, leaves other devices alone, and announces
again when Home Assistant says it is back online; a hung gateway's measurements expire and a
killed one's go unavailable."""

from __future__ import annotations

import itertools
import json
import signal
import statistics
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from drivers.simulated import SimulatedSensor
from gateway import __version__
from gateway.monitor import homeassistant
from gateway.wire import identity
from tests.brokers import Mosquitto
from tests.collector import Collector
from tests.gatewayproc import GatewayProcess, write_config
from tests.ha_sensor import Entity

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


class _Timed(Collector):
    """A collector that notes when each message arrived (monotonic seconds)."""

    def __init__(self, port: int, topic: str, client_id: str) -> None:
        self.arrivals: list[tuple[float, str, bytes]] = []
        super().__init__(port, topic=topic, client_id=client_id)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        self.arrivals.append((time.monotonic(), msg.topic, bytes(msg.payload)))
        super()._on_message(client, userdata, msg)


def test_a_hung_gateways_values_expire_and_a_killed_ones_go_unavailable(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """Home Assistant's view of a real gateway, played from what the broker delivered: alive,
    the measurements never expire; hung (SIGSTOP: its connection stays open, so no Last Will
    while the keep-alive runs), they go unavailable after `expire_after` while *Online* still
    says on; resumed, they come back; killed (SIGKILL), the Will makes everything unavailable.
    The configs are the ones `discovery()` makes for this gateway's intervals."""
    cfg = write_config(
        tmp_path / "gw", mosquitto.port, interval="2 s", extra_uplink='keepalive = "600 s"'
    )
    cfg.write_text(cfg.read_text() + '\n[monitor]\nstate_interval = "1 s"\n')
    device = identity.load(tmp_path / "gw" / "device.key").device_id
    units = SimulatedSensor(sensor_id="env", options={"kind": "all"}).quantities
    msgs = homeassistant.discovery(
        device_id=device,
        name="test-gateway",
        version=__version__,
        prefix="depin/v1",
        sensors=[homeassistant.Sensor("env", units, "simulated", 2.0)],
        state_interval=1.0,
    )
    configs = [json.loads(p) for t, p in msgs.items() if "/sensor/" in t and "/env-" in t]
    expire = 3 * 2  # three times the longer of the sensor's interval and the state interval
    assert {c["expire_after"] for c in configs} == {expire}
    online_cfg = json.loads(msgs[f"homeassistant/binary_sensor/{device}/online/config"])
    status_topic = online_cfg["state_topic"]

    seen = _Timed(mosquitto.port, topic=f"depin/v1/{device}/+", client_id="ha-timed")
    gw = GatewayProcess(cfg, tmp_path / "gw.log")

    def ha_view(at: float) -> tuple[set[Any], str | None]:
        """What Home Assistant shows at monotonic time `at`: the measurements' states (as a
        set) and the Online binary sensor's."""
        entities = [Entity(c) for c in configs]
        online = None
        for t, topic, payload in list(seen.arrivals):
            if t > at:
                break
            for e in entities:
                e.receive(t, topic, payload)
            if topic == status_topic:
                online = {"online": "on", "offline": "off"}.get(payload.decode(), online)
        return {
            "unavailable" if e.shown(at) == "unavailable" else "value" for e in entities
        }, online

    def states() -> list[float]:
        return [t for t, topic, _ in seen.arrivals if topic.endswith("/state")]

    try:
        gw.start()
        assert seen.wait_for(lambda: len(states()) >= 2, 30), gw.log.read_text()[-2000:]
        alive_from = time.monotonic()
        time.sleep(10)
        # Alive: at every moment, every measurement shows its value.
        lived = [t for t in states() if t >= alive_from]
        moments = [t - 0.001 for t in lived[1:]] + [time.monotonic()]
        assert all(ha_view(t) == ({"value"}, "on") for t in moments), ha_view(moments[-1])
        gaps = [b - a for a, b in itertools.pairwise(states())]
        print(f"state every {statistics.median(gaps):.2f} s, at most {max(gaps):.2f} s apart")

        assert gw.proc is not None
        gw.proc.send_signal(signal.SIGSTOP)  # hung: nothing more, the connection still open
        stopped = time.monotonic()
        time.sleep(expire + 1.5)
        assert ha_view(time.monotonic()) == ({"unavailable"}, "on")
        assert ha_view(stopped + 1) == ({"value"}, "on")  # not before expire_after ran out

        gw.proc.send_signal(signal.SIGCONT)
        resumed = time.monotonic()
        assert seen.wait_for(lambda: states()[-1] > resumed, 10)
        assert ha_view(time.monotonic()) == ({"value"}, "on")

        gw.kill()  # the broker sees the connection drop and publishes the Will
        assert seen.wait_for(lambda: ha_view(time.monotonic())[1] == "off", 10)
        assert ha_view(time.monotonic()) == ({"unavailable"}, "off")
    finally:
        seen.close()
        if gw.running():
            gw.proc.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
            gw.kill()
