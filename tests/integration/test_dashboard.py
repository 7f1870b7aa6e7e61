"""The fleet dashboard: its model of the fleet from MQTT messages, the HTTP server and its
event stream over real sockets, bounded memory, and the page itself in headless Chromium
against a real mosquitto: with two demo gateways on a desktop screen, and as a new user meets it
on a 390 px phone (units, layout, a zero score explained, the chain line, a silent gateway, a
real gateway killed with SIGKILL shown offline, the broker lost).

The browser test needs Debian's `chromium` and `chromium-driver` and the Python package
`selenium`. Without them it is skipped on a workstation and fails in CI (CI=true).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cbor2
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.dashboard import server as dash_server
from gateway.dashboard.model import POINTS, WINDOW, Fleet, Series, dumps
from gateway.dashboard.subscriber import Broker, parse_broker
from gateway.wire import cose, dcbor, merkle
from tests import make_batches as mb
from tests.brokers import Mosquitto

P = "depin/v1"
NOW = float(mb.SEALED)  # the batches of make_batches read around this time
DEV = mb.identity(mb.SEED_A)
ATTESTOR = mb.identity(mb.SEED_B)


def _state(device_id: str, **readings: Any) -> bytes:
    sensors: dict[str, dict[str, Any]] = {}
    for key, r in readings.items():
        sid, q = key.split("__")
        sensors.setdefault(sid, {})[q] = r
    return json.dumps(
        {"device": device_id, "name": "roof", "updated": NOW, "sensors": sensors}
    ).encode()


def _health(**extra: Any) -> bytes:
    doc = {
        "name": "roof",
        "version": "0.1.0",
        "queue_depth": 7,
        "oldest_unsent_age_s": 3.5,
        "connected": True,
        "protocol": "5",
        "last_seq": 41,
        "batches_sealed": 42,
        "batches_acked": 40,
        "readings": 1000,
        "flagged": 3,
        "anomaly_rate": 0.003,
        "uptime_s": 3600.0,
        "clock": {"synced": True, "source": "ntp"},
        "modules": [{"id": "physics", "name": "ranges", "version": "1.0", "sha256": "00" * 32}],
        "attestation": None,
        **extra,
    }
    return json.dumps(doc).encode()


def _birth(ident: Any = DEV) -> bytes:
    """The device's own signed birth: what puts it on the page."""
    return mb.sign(ident, mb.birth_payload(ident), cose.TYP_BIRTH)


def _forge(message: bytes) -> bytes:
    """The message with its signature's last byte flipped."""
    env = cbor2.loads(message).value
    sig = env[3][:-1] + bytes([env[3][-1] ^ 1])
    return cbor2.dumps(cbor2.CBORTag(18, [env[0], {}, env[2], sig]))


# --- the model ----------------------------------------------------------------------------------


def test_model_takes_every_kind_of_message() -> None:
    fleet = Fleet(P, attestors=[ATTESTOR.did])
    d = DEV.device_id
    # unsigned messages of a gateway not shown yet wait for its signed birth or batch
    assert fleet.handle(f"{P}/{d}/status", b"online", NOW) is None
    fleet.handle(
        f"{P}/{d}/state",
        _state(
            d,
            climate__temperature={"v": 21.5, "u": "Cel", "t": NOW - 5, "as": 0.0, "af": []},
            climate__humidity={
                "v": None,
                "u": "%RH",
                "t": NOW - 5,
                "as": 1,
                "af": ["sensor-error"],
            },
            pm__pm2_5={"v": 900.5, "u": "ug/m3", "t": NOW - 5, "as": 0.9, "af": ["spike"]},
        ),
        NOW,
    )
    fleet.handle(f"{P}/{d}/health", _health(), NOW)
    assert fleet.devices == {} and set(fleet.pending[d]) == {"status", "state", "health"}
    assert (
        fleet.handle(
            f"{P}/{d}/birth", mb.sign(DEV, mb.birth_payload(DEV, next_seq=3), cose.TYP_BIRTH), NOW
        )
        == d
    )
    assert fleet.pending == {} and fleet.pending_bytes == 0
    chain = mb.Chain(DEV)
    for b in chain.take(3):
        fleet.handle(f"{P}/{d}/batch", b.message, NOW)
    attestation = mb.sign(ATTESTOR, mb.attestation_payload(ATTESTOR, DEV), cose.TYP_ATTESTATION)
    fleet.handle(f"{P}/{d}/attestation", attestation, NOW)

    s = fleet.detail(d)
    assert s is not None
    assert s["status"] == "online" and s["name"] == "roof"
    latest = s["latest"]
    assert latest["climate/temperature"]["v"] == 21.5
    assert latest["climate/humidity"]["v"] is None
    assert latest["climate/humidity"]["af"] == ["sensor-error"]
    assert latest["pm/pm2_5"]["af"] == ["spike"]
    assert s["flagged"] == ["climate/humidity", "pm/pm2_5"]
    assert {(a["key"], tuple(a["af"])) for a in s["anomalies"]} == {
        ("climate/humidity", ("sensor-error",)),
        ("pm/pm2_5", ("spike",)),
    }
    assert s["health"]["queue_depth"] == 7
    assert s["chain"] == {
        "sealed": 41,
        "seen": 2,
        "batches": 3,
        "batch_t": mb.SEALED + 120,
        "rejected": 0,
        "problem": None,
    }
    birth = s["birth"]
    assert birth["verified"] and birth["next_seq"] == 3 and birth["version"] == "0.1.0"
    assert birth["sensors"][0]["id"] == "climate"
    att = s["attestation"]
    assert att["verified"] is True and att["problem"] is None
    assert att["score"] == 0.5 and att["status"] == "ok" and att["attestor"] == ATTESTOR.did
    assert (att["expected"], att["verified_readings"], att["flagged"]) == (360, 355, 2)
    # the batch records feed the sparklines too (make_batches: temperature at even i)
    # (records at SEALED-60 and -58 share a 10 s bucket: the newest reading is its point)
    temps = s["series"]["climate/temperature"]["points"]
    assert [p[1] for p in temps] == [23.25, 21.5]
    assert s["series"]["climate/humidity"]["u"] == "%RH"
    json.loads(dumps(fleet.snapshot()))  # all of it is plain JSON (no NaN)


def test_model_marks_what_does_not_verify() -> None:
    fleet = Fleet(P, attestors=[ATTESTOR.did])
    d = DEV.device_id
    other = mb.identity(bytes(range(64, 96)))
    fleet.handle(f"{P}/{d}/birth", _birth(), NOW)
    attestation = mb.sign(ATTESTOR, mb.attestation_payload(ATTESTOR, DEV), cose.TYP_ATTESTATION)

    fleet.handle(f"{P}/{d}/attestation", _forge(attestation), NOW)
    att = fleet.detail(d)["attestation"]  # type: ignore[index]
    assert att["verified"] is False and att["problem"].startswith("bad-signature")
    assert att["score"] == 0.5  # still shown, marked unverified

    about_other = mb.sign(ATTESTOR, mb.attestation_payload(ATTESTOR, other), cose.TYP_ATTESTATION)
    fleet.handle(f"{P}/{d}/attestation", about_other, NOW)
    assert fleet.detail(d)["attestation"]["problem"] == "about another device"  # type: ignore[index]

    # a good signature by an attestor the dashboard was not told to trust is not "verified"
    for trusting in (Fleet(P, attestors=[other.did]), Fleet(P)):
        trusting.handle(f"{P}/{d}/birth", _birth(), NOW)
        trusting.handle(f"{P}/{d}/attestation", attestation, NOW)
        att = trusting.detail(d)["attestation"]  # type: ignore[index]
        assert att["verified"] is False and att["signed"] is True
        assert att["problem"].startswith("attestor not trusted")

    # a birth signed by another device's key on this device's topic: anyone can publish it,
    # so it is counted in the intake, never shown nor held against the device
    fleet.handle(f"{P}/{d}/birth", mb.sign(other, mb.birth_payload(other), cose.TYP_BIRTH), NOW)
    s = fleet.detail(d)
    assert s is not None and s["birth"]["verified"] and s["birth"]["version"] == "0.1.0"
    assert s["chain"]["rejected"] == 0 and s["chain"]["problem"] is None
    assert fleet.intake()["refused"]["birth: not signed by its device"] == 1

    # a tampered batch is counted in the intake, not plotted
    b = mb.Chain(DEV).next()
    fleet.handle(f"{P}/{d}/batch", mb.tampered_unsigned(b), NOW)
    s = fleet.detail(d)
    assert s is not None
    assert s["chain"]["rejected"] == 0 and s["chain"]["seen"] is None
    assert fleet.intake()["refused"]["batch: not signed by its device"] == 1
    assert s["series"] == {} and s["latest"] == {}

    # clearing a retained attestation removes it
    fleet.handle(f"{P}/{d}/attestation", b"", NOW)
    assert fleet.detail(d)["attestation"] is None  # type: ignore[index]


def test_model_ignores_junk() -> None:
    fleet = Fleet(P, max_devices=2, max_series=3)
    d = DEV.device_id
    assert fleet.handle(f"{P}/{d}/model/result", b"{}", NOW) is None
    assert fleet.handle(f"{P}/not+an+id/state", b"{}", NOW) is None
    assert fleet.handle(f"other/{d}/state", b"{}", NOW) is None
    assert fleet.handle(f"{P}/{d}/status", b"", NOW) is None  # a cleared retained topic
    fleet.handle(f"{P}/{d}/birth", _birth(), NOW)
    fleet.handle(f"{P}/{d}/state", b'{"sensors": {"a": {"x": {"v": NaN, "t": 1}}}}', NOW)
    fleet.handle(f"{P}/{d}/state", b"\xff\xfe", NOW)
    fleet.handle(f"{P}/{d}/health", b"[1, 2]", NOW)
    s = fleet.detail(d)
    assert s is not None and s["latest"] == {} and s["health"] is None
    # no more series per device than the cap, no more devices than the cap
    many = {f"s{i}__q": {"v": i, "u": "1", "t": NOW, "af": []} for i in range(10)}
    fleet.handle(f"{P}/{d}/state", _state(d, **many), NOW)
    assert len(fleet.devices[d].series) == 3
    # a wrong clock far ahead is not plotted (it would push the hour out of view)
    fleet.handle(f"{P}/{d}/state", _state(d, a__q={"v": 1, "u": "1", "t": NOW + 86400}), NOW)
    assert "a/q" not in fleet.devices[d].series or len(fleet.devices[d].series["a/q"]) == 0
    # unsigned messages never show a gateway
    assert fleet.handle(f"{P}/z6MkB/status", b"online", NOW) is None
    assert fleet.handle(f"{P}/z6MkB/health", _health(), NOW) is None
    assert list(fleet.devices) == [d]


def test_a_full_fleet_makes_room_for_a_signed_gateway() -> None:
    """At the cap, a newly signed gateway takes the place of the one whose last signed message
    is the oldest: gateways signed by throwaway keys cannot keep a live one off the page."""
    fleet = Fleet(P, max_devices=3)
    d = DEV.device_id
    fleet.handle(f"{P}/{d}/birth", _birth(), NOW)
    fakes = [mb.identity(bytes([i]) * 32) for i in range(1, 6)]
    for i, fake in enumerate(fakes):
        fleet.handle(f"{P}/{fake.device_id}/birth", _birth(fake), NOW + 1 + i)
    assert len(fleet.devices) == 3 and d not in fleet.devices and fleet.evicted == 3
    update = fleet.take_update()
    assert update is not None and d in update["gone"]
    # the honest gateway's next batch brings it back, in place of the stalest fake
    batch = mb.Chain(DEV).next()
    assert fleet.handle(f"{P}/{d}/batch", batch.message, NOW + 10) == d
    assert d in fleet.devices and fakes[2].device_id not in fleet.devices


def test_series_memory_is_bounded() -> None:
    s = Series("Cel", window=WINDOW, cap=POINTS)
    t = NOW
    for i in range(100_000):  # ten hours of readings every 0.36 s
        t = NOW + i * 0.36
        assert s.add(t, 20 + math.sin(i / 100), i % 997 == 0, now=t)
    assert len(s) <= POINTS
    assert len(s.t) == len(s.v) == len(s.f)
    assert s.t[0] >= t - WINDOW
    assert list(s.t) == sorted(s.t)
    # one point per 10 s bucket, flagged when any reading of the bucket was
    step = WINDOW / POINTS
    buckets = [math.floor(x / step) for x in s.t]
    assert len(set(buckets)) == len(buckets)
    assert any(s.f) and not all(s.f)
    assert len(s.dirty) <= POINTS + 1

    # late readings merge into their bucket or go in their place
    s2 = Series("Cel", window=100, cap=10)  # 10 s buckets
    s2.add(1005.0, 1.0, False, now=1050)
    s2.add(1025.0, 3.0, False, now=1050)
    s2.add(1015.0, 2.0, True, now=1050)  # an earlier bucket, arriving late
    s2.add(1003.0, 9.0, False, now=1050)  # older than the bucket's point: only its flag counts
    s2.add(1009.0, None, True, now=1050)  # a failed read, newest of its bucket
    assert [p[:2] for p in s2.points()] == [[1009.0, None], [1015.0, 2.0], [1025.0, 3.0]]
    assert [p[2] for p in s2.points()] == [1, 1, 0]
    assert not s2.add(900.0, 1.0, False, now=1050)  # before the window


def test_update_carries_only_what_changed() -> None:
    fleet = Fleet(P)
    a, b = DEV.device_id, ATTESTOR.device_id
    fleet.handle(f"{P}/{a}/birth", _birth(DEV), NOW, retained=True)
    fleet.handle(f"{P}/{b}/birth", _birth(ATTESTOR), NOW, retained=True)
    fleet.handle(f"{P}/{a}/status", b"online", NOW)
    fleet.handle(f"{P}/{b}/status", b"online", NOW)
    first = fleet.take_update()
    assert first is not None and {d["id"] for d in first["devices"]} == {a, b}
    assert fleet.take_update() is None
    reading = {"v": 1.5, "u": "Cel", "t": NOW, "as": 0, "af": []}
    fleet.handle(f"{P}/{a}/state", _state(a, x__t=reading), NOW)
    upd = fleet.take_update()
    assert upd is not None
    assert [d["id"] for d in upd["devices"]] == [a]
    assert upd["points"] == {a: {"x/t": {"u": "Cel", "points": [[NOW, 1.5, 0]]}}}
    fleet.set_broker(False, "connection lost")
    upd = fleet.take_update()
    assert upd is not None and upd["devices"] == [] and upd["broker"]["connected"] is False


def test_a_retained_message_is_as_old_as_the_gateway_says() -> None:
    """The broker hands a new subscriber the retained status, state and health of a gateway
    that may have died long ago (its Last Will lost): they must not make it look just heard."""
    fleet = Fleet(P)
    d = DEV.device_id
    then = NOW - 18 * 60
    fleet.handle(f"{P}/{d}/birth", _birth(), NOW, retained=True)  # carries no time
    fleet.handle(f"{P}/{d}/status", b"online", NOW, retained=True)
    assert fleet.devices[d].seen is None  # a status carries no time
    assert fleet.devices[d].status_t is None  # nor when it was set
    fleet.handle(f"{P}/{d}/health", _health(t=then), NOW, retained=True)
    reading = {"v": 1.5, "u": "Cel", "t": then - 5, "as": 0, "af": []}
    state = json.dumps({"name": "roof", "updated": then - 5, "sensors": {"c": {"t": reading}}})
    fleet.handle(f"{P}/{d}/state", state.encode(), NOW, retained=True)
    s = fleet.detail(d)
    assert s is not None and s["status"] == "online" and s["seen"] == then
    assert s["health_every"] is None  # one health message: its rhythm is not known yet
    # a gateway's clock ahead of the dashboard's does not put it in the future
    fleet.handle(f"{P}/{d}/health", _health(t=NOW + 999), NOW, retained=True)
    assert fleet.devices[d].seen == NOW

    # live messages are news when they arrive; health every 60 s by the gateway's clock
    live = Fleet(P)
    live.handle(f"{P}/{d}/birth", _birth(), NOW - 1)
    for i, t in enumerate([NOW, NOW + 60, NOW + 120, NOW + 900, NOW + 960]):  # an outage
        live.handle(f"{P}/{d}/health", _health(t=t), t + 0.3 + i)
    assert live.devices[d].seen == NOW + 964.3
    assert live.devices[d].health_every == 60
    # the attestor's word and the broker's Last Will say nothing of when it was last heard
    attestation = mb.sign(ATTESTOR, mb.attestation_payload(ATTESTOR, DEV), cose.TYP_ATTESTATION)
    live.handle(f"{P}/{d}/attestation", attestation, NOW + 2000)
    live.handle(f"{P}/{d}/status", b"offline", NOW + 2100)
    assert live.devices[d].seen == NOW + 964.3 and live.devices[d].status == "offline"
    assert live.devices[d].status_t == NOW + 2100


def test_an_attestation_says_why_its_score_is_low() -> None:
    fleet = Fleet(P)
    d = DEV.device_id
    fleet.handle(f"{P}/{d}/birth", _birth(), NOW)
    fleet.handle(
        f"{P}/{d}/attestation", _attestation(d, 0.0, expected=120, verified=108, flagged=0), NOW
    )
    att = fleet.detail(d)["attestation"]  # type: ignore[index]
    assert att["score"] == 0.0 and att["status"] == "ok"
    assert att["why"] == [
        "108 of 120 expected readings verified",
        "clock not synced: 0 of 108 readings synced",
    ]
    # the gateway's own copy in its health is explained alike
    copy = {"score": 0.0, "status": "ok", "expected": 120, "verified": 108, "flagged": 0}
    fleet.handle(f"{P}/{d}/health", _health(attestation=copy), NOW)
    assert fleet.detail(d)["health"]["attestation"]["why"] == att["why"]  # type: ignore[index]
    fleet.handle(
        f"{P}/{d}/attestation",
        _attestation(d, 1.0, expected=120, verified=120, flagged=0, revision=1),
        NOW,
    )
    assert fleet.detail(d)["attestation"]["why"] == []  # type: ignore[index]


# --- the HTTP server ----------------------------------------------------------------------------


async def _request(port: int, path: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def _next_event(reader: asyncio.StreamReader) -> tuple[str, Any]:
    """The next named event of a server-sent event stream (comments and retry skipped)."""
    event, data = "", ""
    while True:
        line = (await reader.readline()).decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: "):
            data += line[6:]
        elif line == "" and event:
            return event, json.loads(data)


def test_http_routes_and_event_stream() -> None:
    fleet = Fleet(P)
    d = DEV.device_id
    now = time.time()
    fleet.handle(f"{P}/{d}/birth", _birth(), now, retained=True)
    fleet.handle(f"{P}/{d}/status", b"online", now)
    fleet.handle(f"{P}/{d}/state", _state(d, c__t={"v": 20.0, "u": "Cel", "t": now, "af": []}), now)

    async def main() -> None:
        dash = dash_server.Dashboard(fleet, flush=0.05)
        srv = await asyncio.start_server(dash.handle, "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        flusher = asyncio.create_task(dash.flusher())
        try:
            status, body = await _request(port, "/")
            assert status == 200 and b'src="/static/app.js"' in body
            for name in ("app.js", "style.css"):
                status, body = await _request(port, f"/static/{name}")
                assert status == 200 and len(body) > 1000
            status, body = await _request(port, "/api/devices")
            doc = json.loads(body)
            assert status == 200 and [x["id"] for x in doc["devices"]] == [d]
            assert "series" not in doc["devices"][0]
            status, body = await _request(port, f"/api/device/{d}")
            assert status == 200 and json.loads(body)["series"]["c/t"]["points"][0][1] == 20.0
            assert (await _request(port, "/api/device/z6MkNope"))[0] == 404
            assert (await _request(port, "/static/../server.py"))[0] == 404
            # DNS rebinding: a page on another name cannot read a loopback dashboard
            assert (await _request(port, "/api/devices", host="evil.example"))[0] == 403
            assert (await _request(port, "/", host="localhost"))[0] == 200

            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            assert b"200 OK" in head and b"text/event-stream" in head
            async with asyncio.timeout(10):
                event, snap = await _next_event(reader)
                assert event == "snapshot"
                dev = snap["devices"][0]
                assert dev["latest"]["c/t"]["v"] == 20.0 and dev["series"]["c/t"]["u"] == "Cel"
                fleet.take_update()  # what the snapshot already had
                later = time.time()
                fleet.handle(
                    f"{P}/{d}/state",
                    _state(d, c__t={"v": 23.25, "u": "Cel", "t": later, "af": ["range"]}),
                    later,
                )
                while True:  # (an update the flusher sent before may come first)
                    event, upd = await _next_event(reader)
                    assert event == "update"
                    if upd["devices"] and upd["devices"][0]["latest"]["c/t"]["t"] == later:
                        break
            assert upd["devices"][0]["latest"]["c/t"] == {
                "v": 23.25, "u": "Cel", "t": later, "as": None, "af": ["range"], "src": "state",
            }  # fmt: skip
            assert upd["points"][d]["c/t"]["points"][-1] == [later, 23.25, 1]
            assert len(dash.clients) == 1
            writer.close()
        finally:
            flusher.cancel()
            srv.close()

    asyncio.run(main())


def test_slow_event_client_is_cut_off() -> None:
    client = dash_server._Client()
    for i in range(dash_server.CLIENT_QUEUE + 5):
        client.send(f"event {i}")
    assert client.queue.qsize() == 1 and client.queue.get_nowait() is None


def test_arguments() -> None:
    assert dash_server.parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert dash_server.parse_listen("[::1]:0") == ("::1", 0)
    assert dash_server.parse_listen("9000") == ("127.0.0.1", 9000)
    with pytest.raises(ValueError):
        dash_server.parse_listen("localhost:http")
    b = parse_broker("mqtts://broker.example", username="u", password="p")
    assert (b.host, b.port, b.tls, b.label) == (
        "broker.example",
        8883,
        True,
        "mqtts://broker.example:8883",
    )
    assert parse_broker("127.0.0.1:1884").label == "mqtt://127.0.0.1:1884"
    from gateway.core.errors import ConfigError

    with pytest.raises(ConfigError):
        parse_broker("mqtt://user:secret@broker.example")
    with pytest.raises(ConfigError):
        parse_broker("http://broker.example")


def test_follows_a_real_broker(mosquitto: Mosquitto) -> None:
    """The whole server in-process: retained messages published with paho reach /api/devices."""
    d = DEV.device_id
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-publisher")
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    now = time.time()
    state = _state(d, c__t={"v": 19.5, "u": "Cel", "t": now, "af": []})
    retained = (("status", b"online"), ("state", state), ("health", _health()), ("birth", _birth()))
    for topic, payload in retained:
        pub.publish(f"{P}/{d}/{topic}", payload, qos=1, retain=True).wait_for_publish(5)

    async def main() -> None:
        fleet = Fleet(P)
        urls: list[str] = []
        broker = Broker("127.0.0.1", mosquitto.port, False)
        task = asyncio.create_task(
            dash_server.run(fleet, broker, "127.0.0.1", 0, ready=urls.append)
        )
        try:
            async with asyncio.timeout(15):
                while not urls:
                    await asyncio.sleep(0.05)
                port = int(urls[0].rsplit(":", 1)[1].strip("/"))
                while True:
                    _, body = await _request(port, "/api/devices")
                    doc = json.loads(body)
                    if doc["devices"] and doc["devices"][0]["health"] is not None:
                        break
                    await asyncio.sleep(0.1)
            dev = doc["devices"][0]
            assert doc["broker"]["connected"] is True
            assert dev["status"] == "online" and dev["latest"]["c/t"]["v"] == 19.5
            assert dev["chain"]["sealed"] == 41
            # the Last Will of a gateway: offline
            await asyncio.to_thread(
                lambda: pub.publish(
                    f"{P}/{d}/status", b"offline", qos=1, retain=True
                ).wait_for_publish(5)
            )
            async with asyncio.timeout(10):
                while fleet.devices[d].status != "offline":
                    await asyncio.sleep(0.05)
            # the broker goes away: the page is told
            await asyncio.to_thread(mosquitto.stop)
            async with asyncio.timeout(15):
                while fleet.broker["connected"]:
                    await asyncio.sleep(0.05)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    try:
        asyncio.run(main())
    finally:
        pub.loop_stop()


# --- the page in headless Chromium --------------------------------------------------------------

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


# What the test reads off the page in one go: each card's value cells by reading, the flag
# names shown on flagged rows and anomaly lines, and the two connection pills.
READ_PAGE = """
const cards = {};
const attestations = {};
for (const card of document.querySelectorAll("#view .card[data-device]")) {
  const cells = {};
  for (const td of card.querySelectorAll("tr.reading td.value")) {
    cells[td.dataset.key] = td.innerText;
  }
  cards[card.dataset.device] = cells;
  const a = card.querySelector(".attestation");
  attestations[card.dataset.device] = a ? a.innerText : "";
}
const flags = [...document.querySelectorAll(".card .flagged .flag")].map((e) => e.innerText);
return {
  cards,
  attestations,
  flags,
  lines: document.querySelectorAll(".card svg.spark polyline").length,
  broker: document.getElementById("broker").innerText,
  stream: document.getElementById("stream").innerText,
};
"""


def _attestation(
    device_id: str,
    score: float,
    *,
    expected: int = 7200,
    verified: int = 7100,
    flagged: int = 12,
    status: str = "ok",
    revision: int = 0,
) -> bytes:
    """A signed attestation (spec section 6) about a device, for the hour now."""
    start = int(time.time()) // 3600 * 3600
    revised = {11: revision} if revision else {}
    payload = dcbor.dumps(
        {
            **revised,
            1: ATTESTOR.did,
            2: f"did:key:{device_id}",
            3: start - 3600,
            4: start,
            5: expected,
            6: verified,
            7: flagged,
            8: status,
            9: score,
            10: merkle.root([]),
        }
    )
    return cose.sign1(ATTESTOR, cose.TYP_ATTESTATION, payload)


def _need(what: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"the dashboard browser test needs {what}; the CI test command installs it")
    pytest.skip(f"needs {what}")


def _browser_paths() -> tuple[str, str]:
    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    if not Path(chromium).exists() or not Path(driver).exists():
        _need("Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    try:
        import selenium  # noqa: F401
    except ImportError:
        _need("the Python package selenium (pip install selenium)")
    return chromium, driver


@contextlib.contextmanager
def _processes(*runs: tuple[list[str], Path], cwd: Path) -> Iterator[None]:
    """Python subprocesses, each logging to its file; stopped together as Ctrl-C would."""
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for args, log in runs:
            with log.open("wb") as out:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, *args],
                        stdout=out,
                        stderr=subprocess.STDOUT,
                        cwd=cwd,
                        env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    )
                )
        yield
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 20
        for p in procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _wait_for(what: str, fn: Any, timeout: float, logs: list[Path]) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    tails = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in logs if p.exists())
    pytest.fail(f"timed out waiting for {what}\n{tails}")


@contextlib.contextmanager
def _chromium(tmp_path: Path, *, phone: bool = False) -> Iterator[Any]:
    """Headless Chromium through its chromedriver; `phone`: a 390 x 844 touch screen at
    3 device pixels per CSS pixel, as an iPhone 12 to 15 has (mobile viewport rules apply)."""
    chromium, driver_path = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path, prefix='chromium-')}")
    opts.add_argument("--window-size=1400,1200")
    browser = webdriver.Chrome(options=opts, service=Service(driver_path))
    try:
        if phone:
            browser.execute_cdp_cmd(
                "Emulation.setDeviceMetricsOverride",
                {"width": 390, "height": 844, "deviceScaleFactor": 3, "mobile": True},
            )
            browser.execute_cdp_cmd("Emulation.setTouchEmulationEnabled", {"enabled": True})
        yield browser
    finally:
        browser.quit()


def test_page_in_headless_chromium(tmp_path: Path, mosquitto: Mosquitto) -> None:
    chromium, driver_path = _browser_paths()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    artifacts = Path(os.environ.get("DEPIN_TEST_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    logs = [tmp_path / "dashboard.log", tmp_path / "gw1.log", tmp_path / "gw2.log"]
    root = Path(__file__).resolve().parents[2]

    def gateway(n: int) -> list[str]:
        work = str(tmp_path / f"gw{n}")
        return ["-m", "gateway", "demo", "--simulated", "--broker", mosquitto.url,
                "--duration", "120", "--dir", work, "--seed", str(n)]  # fmt: skip

    dash_args = ["-m", "gateway.dashboard", "--broker", mosquitto.url, "--listen", "127.0.0.1:0",
                 "--attestor", ATTESTOR.did]  # fmt: skip
    with _processes((dash_args, logs[0]), (gateway(1), logs[1]), (gateway(2), logs[2]), cwd=root):
        found = _wait_for(
            "the dashboard's address",
            lambda: re.search(r"dashboard: (http://\S+)", logs[0].read_text()),
            20,
            logs,
        )
        url = found[1]
        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for flag in CHROMIUM_FLAGS:
            opts.add_argument(flag)
        opts.add_argument(f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path, prefix='chromium-')}")
        opts.add_argument("--window-size=1400,1200")
        browser = webdriver.Chrome(options=opts, service=Service(driver_path))
        try:
            browser.get(url)

            # The page redraws a card whenever its gateway changes, so elements are read in
            # one script call each time rather than held across calls (they would go stale).
            def page() -> dict[str, Any]:
                doc: dict[str, Any] = browser.execute_script(READ_PAGE)
                return doc

            # both gateways appear, each with its readings
            _wait_for(
                "two gateways on the page",
                lambda: len(page()["cards"]) == 2 and all(page()["cards"].values()),
                60,
                logs,
            )
            ids = sorted(page()["cards"])

            # the attestor's signed score: one good, one forged
            good, forged = _attestation(ids[0], 0.875), _forge(_attestation(ids[1], 0.25))
            pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-attestor")
            pub.connect("127.0.0.1", mosquitto.port)
            pub.loop_start()
            try:
                for device, message in ((ids[0], good), (ids[1], forged)):
                    topic = f"{P}/{device}/attestation"
                    pub.publish(topic, message, qos=1, retain=True).wait_for_publish(5)
            finally:
                pub.loop_stop()
                pub.disconnect()
            shown = _wait_for(
                "the attestations",
                lambda: (a := page()["attestations"])[ids[1]] != "none yet" and a,
                20,
                logs,
            )
            assert re.search(r"0\.875\s+chain ok\s+verified", shown[ids[0]]), shown
            assert re.search(r"0\.250\s+chain ok\s+unverified", shown[ids[1]]), shown

            # a value updates: the text of a value element changes
            def values() -> dict[str, str]:
                return {
                    f"{device} {key}": text
                    for device, cells in page()["cards"].items()
                    for key, text in cells.items()
                }

            before = values()
            changed = _wait_for(
                "a value to change",
                lambda: [k for k, v in values().items() if k in before and v != before[k]],
                30,
                logs,
            )
            print(
                f"value changed: {changed[0]}: {before[changed[0]]!r} -> {values()[changed[0]]!r}"
            )

            # the injected fault of the demo's "outdoor" sensor shows flagged, by name
            _wait_for("a flagged 'range' fault", lambda: "range" in page()["flags"], 60, logs)
            # sparklines draw lines once a series has two points (10 s buckets)
            _wait_for("sparkline lines", lambda: page()["lines"] >= 2, 40, logs)
            # the broker and the page's own stream say they are live
            state = page()
            assert state["broker"] == "broker: connected" and state["stream"] == "page: live"
            # nothing cut, off screen or sticking out of its card on a desktop screen either
            assert browser.execute_script(READ_FIRST_LOOK)["problems"] == []
            shot = artifacts / "dashboard-overview.png"
            browser.save_screenshot(str(shot))

            # the per-device detail view (hash route), by clicking the gateway's name
            device = ids[0]
            browser.execute_script(
                "document.querySelector(`.card[data-device='${arguments[0]}'] a.name`).click()",
                device,
            )
            text = _wait_for(
                "the detail view",
                lambda: browser.execute_script(
                    "const e = document.querySelector(`article.detail[data-device='${arguments[0]}']`);"  # noqa: E501
                    "return e && e.innerText;",
                    device,
                ),
                10,
                logs,
            )
            assert browser.current_url.endswith(f"#/device/{device}")
            for heading in ("Readings", "Gateway", "Attestation", "Birth", "Recent anomalies"):
                assert heading in text
            assert re.search(r"signature\s+verified", text)  # the birth's
            detail = artifacts / "dashboard-detail.png"
            browser.save_screenshot(str(detail))
            errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]  # type: ignore[no-untyped-call]
            assert errors == [], errors
        finally:
            browser.quit()
    print(f"screenshots: {shot} {detail}")


# What a person on a phone would notice, read off the page in one go: anything wider than the
# screen, names cut or off the screen, flags sticking out of their card, and per card the pill,
# the values, the chain line, the attestation (its text and colour) and the card's own text.
READ_FIRST_LOOK = """
const width = document.documentElement.clientWidth;
const problems = [];
const where = (e) => (e.closest("[data-device]") || {dataset: {}}).dataset.device + ": " +
  (e.innerText || "").slice(0, 40);
if (document.documentElement.scrollWidth > width) {
  problems.push(`page ${document.documentElement.scrollWidth} px wide in ${width} px`);
}
for (const e of document.querySelectorAll(".name, .readings .key, .anomalies .key, h2, dt, th")) {
  const r = e.getBoundingClientRect();
  if (r.width === 0) continue;  // not shown (the phone layout hides the table's column heads)
  if (r.left < -0.5 || r.right > width + 0.5) problems.push(`off screen: ${where(e)}`);
  if (e.scrollWidth > e.clientWidth + 1) problems.push(`cut: ${where(e)}`);
}
for (const f of document.querySelectorAll(".flag")) {
  const box = f.closest(".card, .panel").getBoundingClientRect();
  const r = f.getBoundingClientRect();
  if (r.left < box.left - 0.5 || r.right > box.right + 0.5 || r.bottom > box.bottom + 0.5) {
    problems.push(`flag outside its card: ${where(f)}`);
  }
}
const probe = document.createElement("span");
probe.style.color = "var(--good)";
document.body.append(probe);
const green = getComputedStyle(probe).color;
probe.remove();
const cards = {};
for (const card of document.querySelectorAll("[data-device]")) {
  const values = {};
  for (const td of card.querySelectorAll("td.value")) values[td.dataset.key] = td.innerText.trim();
  const score = card.querySelector(".attestation .score");
  const chain = card.querySelector(".chain");
  cards[card.dataset.device] = {
    status: card.querySelector(".pill.status").innerText,
    offline: card.classList.contains("offline"),
    values,
    chain: chain ? chain.innerText : null,
    attestation: (card.querySelector(".attestation") || {}).innerText || null,
    score_green: score ? getComputedStyle(score).color === green : null,
    text: card.innerText,
  };
}
return {problems, cards, counts: document.getElementById("counts").innerText,
        broker: document.getElementById("broker").innerText, body: document.body.innerText};
"""


def _publish(port: int, messages: list[tuple[str, bytes, bool]]) -> None:
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-pub-{time.monotonic_ns()}")
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    try:
        for topic, payload, retain in messages:
            pub.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)
    finally:
        pub.loop_stop()
        pub.disconnect()


def test_a_first_look_on_a_phone(tmp_path: Path, mosquitto: Mosquitto) -> None:
    """The page as a new user meets it, on a 390 px phone, in headless Chromium against a real
    mosquitto: readable units (°C, %, hPa, µg/m³, ppm), nothing wider than the screen, names
    whole, flags inside their card, a zero score in red that says why, the chain line in words,
    a gateway whose Last Will never came shown silent, a real gateway killed with SIGKILL shown
    offline, and every status unknown once the dashboard loses the broker."""
    from tests.gatewayproc import GatewayProcess, write_config

    artifacts = Path(os.environ.get("DEPIN_TEST_ARTIFACTS") or tmp_path)
    artifacts.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parents[2]
    now = time.time()
    roof, ghost = DEV.device_id, mb.identity(bytes(range(64, 96))).device_id

    # "roof": a gateway as its retained messages and one live batch show it. Pressure comes in
    # pascals, concentrations in ug/m3; one reading carries three long flags.
    def r(v: float | None, u: str, *flags: str) -> dict[str, Any]:
        return {"v": v, "u": u, "t": now - 3, "as": 0.9 if flags else 0.0, "af": list(flags)}

    state = _state(
        roof,
        climate__temperature=r(21.54, "Cel"),
        climate__humidity=r(45.21, "%RH"),
        climate__pressure=r(101200.0, "Pa"),
        **{"balcony-particulates__pm2_5": r(12.44, "ug/m3")},
        **{"balcony-particulates__pm10": r(None, "ug/m3", "sensor-error", "implausible", "spike")},
        co2__co2=r(415.3, "ppm"),
    )
    health = _health(t=now, last_seq=15, name="roof-of-the-community-garden-shed-north")
    chain = mb.Chain(DEV)
    batch14 = chain.take(15)[14].message
    zero = _attestation(roof, 0.0, expected=120, verified=108, flagged=0)
    # "ghost": said online, last health 18 minutes ago, and then nothing: its Will was lost
    ghost_health = json.loads(_health(t=now - 18 * 60, name="ghost"))
    retained = [
        (f"{P}/{roof}/birth", _birth(DEV), True),
        (f"{P}/{ghost}/birth", _birth(mb.identity(bytes(range(64, 96)))), True),
        (f"{P}/{roof}/status", b"online", True),
        (f"{P}/{roof}/state", state, True),
        (f"{P}/{roof}/health", health, True),
        (f"{P}/{roof}/attestation", zero, True),
        (f"{P}/{ghost}/status", b"online", True),
        (f"{P}/{ghost}/health", json.dumps(ghost_health).encode(), True),
    ]
    _publish(mosquitto.port, retained)
    # "test-gateway": a real gateway process, to be killed
    gw = GatewayProcess(
        write_config(tmp_path / "gw", mosquitto.port, interval="1 s"), tmp_path / "gw.log"
    )
    from gateway.wire import identity

    real = identity.load(tmp_path / "gw" / "device.key").device_id
    logs = [tmp_path / "dashboard.log", tmp_path / "gw.log"]
    dash_args = ["-m", "gateway.dashboard", "--broker", mosquitto.url, "--listen", "127.0.0.1:0"]
    gw.start()
    try:
        with _processes((dash_args, logs[0]), cwd=root), _chromium(tmp_path, phone=True) as browser:
            found = _wait_for(
                "the dashboard's address",
                lambda: re.search(r"dashboard: (http://\S+)", logs[0].read_text()),
                20,
                logs,
            )
            browser.get(found[1])

            def page() -> dict[str, Any]:
                doc: dict[str, Any] = browser.execute_script(READ_FIRST_LOOK)
                return doc

            _wait_for("three gateways", lambda: len(page()["cards"]) == 3, 30, logs)
            _publish(mosquitto.port, [(f"{P}/{roof}/batch", batch14, False)])  # live
            _wait_for(
                "the real gateway online and the batch delivered",
                lambda: (
                    (c := page()["cards"])[real]["status"] == "online"
                    and "#14" in (c[roof]["chain"] or "")
                ),
                30,
                logs,
            )
            doc = page()
            assert doc["problems"] == [], doc["problems"]
            card = doc["cards"][roof]
            assert card["values"] == {
                "climate/humidity": "45.2 %",
                "climate/pressure": "1012.0 hPa",
                "climate/temperature": "21.5 °C",
                "co2/co2": "415 ppm",
                "balcony-particulates/pm10": "—",  # a failed read
                "balcony-particulates/pm2_5": "12.4 µg/m³",
            }, card["values"]
            # the wire's spellings never reach the reader
            assert not re.search(r"\bCel\b|%RH|ug/m3|\d\s*Pa\b", doc["body"]), doc["body"]
            assert "PM2.5" in card["text"] and "CO₂" in card["text"]
            # a zero score is not green and says why
            assert card["score_green"] is False
            assert card["attestation"].startswith("0.000"), card["attestation"]
            for why in (
                "108 of 120 expected readings verified",
                "clock not synced: 0 of 108 readings synced",
            ):
                assert why in card["attestation"], card["attestation"]
            # the gateway's health (last_seq 15) is ahead of the newest batch seen (14)
            assert card["chain"] == "last batch #15 sealed · #14 delivered"
            ghost_card = doc["cards"][ghost]
            assert ghost_card["status"] == "silent", ghost_card
            assert "silent (says online, but nothing for 18 min" in ghost_card["text"]
            assert doc["counts"].startswith("3 gateways · 2 online"), doc["counts"]
            # the chain line's words for each case (the page's own function)
            said = browser.execute_script(
                "return [[13, 14], [14, 14], [15, 14], [13, null], [null, 14], [null, null]]"
                ".map(([sealed, seen]) => chainText({chain: {sealed, seen}}));"
            )
            assert said == [
                "last batch #14 sealed and delivered",
                "last batch #14 sealed and delivered",
                "last batch #15 sealed · #14 delivered",
                "last batch #13 sealed",
                "last batch #14 sealed and delivered",
                "—",
            ]
            overview = artifacts / "dashboard-phone-overview.png"
            browser.save_screenshot(str(overview))

            # the detail view on the phone: every reading readable, the score explained
            browser.execute_script(
                "document.querySelector(`.card[data-device='${arguments[0]}'] a.name`).click()",
                roof,
            )
            _wait_for(
                "the detail view",
                lambda: roof in page()["cards"] and len(page()["cards"]) == 1,
                10,
                logs,
            )
            doc = page()
            assert doc["problems"] == [], doc["problems"]
            detail = doc["cards"][roof]
            assert detail["values"]["climate/pressure"] == "1012.0 hPa"
            assert "1012.0 … 1012.0 hPa" in detail["text"]  # the hour's range
            for why in (
                "108 of 120 expected readings verified",
                "clock not synced: 0 of 108 readings synced",
            ):
                assert why in detail["attestation"], detail["attestation"]
            assert detail["score_green"] is False
            detail_shot = artifacts / "dashboard-phone-detail.png"
            browser.save_screenshot(str(detail_shot))
            browser.execute_script("location.hash = '#/'")
            _wait_for("the overview", lambda: len(page()["cards"]) == 3, 10, logs)

            # the real gateway dies without a word: the broker publishes its Last Will
            gw.kill()
            card = _wait_for(
                "the killed gateway shown offline",
                lambda: (c := page()["cards"][real])["status"] == "offline" and c,
                20,
                logs,
            )
            assert card["offline"]  # greyed out
            assert "offline (for " in card["text"]
            assert page()["counts"].startswith("3 gateways · 1 online")
            killed = artifacts / "dashboard-phone-killed.png"
            browser.execute_script(
                "document.querySelector(`.card[data-device='${arguments[0]}']`).scrollIntoView()",
                real,
            )
            browser.save_screenshot(str(killed))

            # the dashboard loses the broker: it cannot know who is online any more
            mosquitto.stop()
            doc = _wait_for(
                "every status unknown",
                lambda: (
                    (d := page())["broker"] == "broker: disconnected"
                    and {c["status"] for c in d["cards"].values()} == {"unknown"}
                    and d
                ),
                30,
                logs,
            )
            assert "unknown (the dashboard lost the broker" in doc["cards"][roof]["text"]
            assert doc["counts"].startswith("3 gateways · 0 online")
            errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
            # the page's event stream is its own and stays up; nothing else may fail
            assert errors == [], errors
    finally:
        if gw.running():
            gw.kill()
    print(f"screenshots: {overview} {detail_shot} {killed}")
