"""The uplink against a real mosquitto that wants TLS, a client certificate and a password."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.brokers import Mosquitto, tls_mosquitto
from tests.certs import make_pki
from tests.collector import unique_batches
from tests.gatewayproc import GatewayProcess, write_config


@pytest.fixture
def secure_broker(tmp_path: Path) -> Iterator[tuple[Mosquitto, dict[str, Path]]]:
    pki = make_pki(tmp_path / "pki")
    pw = tmp_path / "broker" / "passwd"
    pw.parent.mkdir(parents=True)
    subprocess.run(
        ["mosquitto_passwd", "-b", "-c", str(pw), "gw", "s3cret"], check=True, capture_output=True
    )
    pw.chmod(0o600)
    auth = f"allow_anonymous false\npassword_file {pw}\n"
    with tls_mosquitto(tmp_path / "broker", pki, auth) as broker:
        yield broker, pki


def _collect(broker: Mosquitto, pki: dict[str, Path]) -> tuple[mqtt.Client, list[bytes]]:
    got: list[bytes] = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tls-collector")
    c.tls_set(ca_certs=str(pki["ca"]), certfile=str(pki["client"]), keyfile=str(pki["client_key"]))
    c.username_pw_set("gw", "s3cret")
    c.on_connect = lambda cl, *a: cl.subscribe("depin/v1/+/batch", qos=1)
    c.on_message = lambda cl, u, m: got.append(bytes(m.payload))
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    return c, got


def test_tls_client_certificate_and_password_file(
    tmp_path: Path, secure_broker: tuple[Mosquitto, dict[str, Path]]
) -> None:
    broker, pki = secure_broker
    (tmp_path / "pw").write_text("s3cret\n")
    (tmp_path / "pw").chmod(0o600)
    cfg = write_config(
        tmp_path / "gw",
        broker.port,
        extra_uplink=(
            f'ca_file = "{pki["ca"]}"\ncert_file = "{pki["client"]}"\n'
            f'key_file = "{pki["client_key"]}"\nusername = "gw"\n'
            f'password_file = "{tmp_path / "pw"}"'
        ),
    )
    cfg.write_text(cfg.read_text().replace("mqtt://", "mqtts://"))
    collector, got = _collect(broker, pki)
    gw = GatewayProcess(cfg, tmp_path / "gw.log")
    try:
        gw.start()
        assert gw.wait_log("connected to", 20), gw.log.read_text()
        time.sleep(2)
        assert gw.terminate() == 0
        time.sleep(0.5)
        assert len(unique_batches(got)) >= 2
    finally:
        collector.loop_stop()
        if gw.running():
            gw.kill()


def test_wrong_password_is_reported_and_retried(
    tmp_path: Path, secure_broker: tuple[Mosquitto, dict[str, Path]]
) -> None:
    broker, pki = secure_broker
    cfg = write_config(
        tmp_path / "gw",
        broker.port,
        extra_uplink=(
            f'ca_file = "{pki["ca"]}"\ncert_file = "{pki["client"]}"\n'
            f'key_file = "{pki["client_key"]}"\nusername = "gw"\npassword_env = "GW_TEST_PW"'
        ),
    )
    cfg.write_text(cfg.read_text().replace("mqtt://", "mqtts://"))
    os.environ["GW_TEST_PW"] = "wrong"
    gw = GatewayProcess(cfg, tmp_path / "gw.log")
    try:
        gw.start()
        assert gw.wait_log("WARNING gateway.uplink", 20)
        time.sleep(1.5)
        assert gw.running(), "a refused login must not stop the gateway: it keeps spooling"
        log = gw.log.read_text()
        assert "connected to" not in log
        assert "Not authorized" in log
        assert gw.terminate() == 0
    finally:
        os.environ.pop("GW_TEST_PW", None)
        if gw.running():
            gw.kill()
