"""Find SDS011 and PMS5003/7003 sensors on serial ports, for `depin-gateway probe`.

Each port is opened (exclusively, 9600 8N1) and listened to for `listen` seconds while the
read-only requests of both chips are sent every second: SDS011 "query data" and "get sleep
state" (a sleeping SDS011 still answers the latter) and the PMS "passive read". A sensor in
active mode is heard without asking. A chip counts as found only on a frame that passes its
checksum (and tail), never on start bytes alone: noise on an idle line is full of 0xAA and "BM".
Nothing is changed on the sensor; a sleeping PMS cannot answer and is not found.
"""

from __future__ import annotations

import glob
import os
import re
import time
from collections import Counter
from dataclasses import dataclass

from drivers import pms5003, sds011
from drivers.serial_bus import FrameParser, SerialTransport
from gateway.core.errors import SensorError
from gateway.core.units import format_duration

__all__ = ["Found", "default_ports", "probe_serial", "sensor_snippet"]

_ASK_EVERY = 1.0  # s between rounds of requests


@dataclass(frozen=True)
class Found:
    """A sensor heard on `port`; `snippet` is a `[[sensor]]` table ready to paste."""

    port: str
    driver: str
    detail: str
    snippet: str


def default_ports() -> list[str]:
    """The serial ports worth listening on: the Pi's UART names and USB adapters, each device
    once (by its first, most stable name)."""
    names: list[str] = []
    for pattern in (
        "/dev/serial/by-id/*",
        "/dev/serial0",
        "/dev/serial1",
        "/dev/ttyAMA*",
        "/dev/ttyUSB*",
        "/dev/ttyACM*",
    ):
        names += sorted(glob.glob(pattern))
    seen: set[str] = set()
    out = []
    for name in names:
        real = os.path.realpath(name)
        if real not in seen:
            seen.add(real)
            out.append(name)
    return out


def _sensor_id(driver: str, port: str) -> str:
    base = re.sub(r"[^a-z0-9_-]+", "-", os.path.basename(port).lower()).strip("-_")
    return f"{driver}-{base}" if base else driver


def sensor_snippet(driver: str, port: str) -> str:
    """The `[[sensor]]` table for `driver` on `port`, with the driver's default interval."""
    cls = sds011.SDS011 if driver == "sds011" else pms5003.PMS5003
    lines = [
        "[[sensor]]",
        f'id = "{_sensor_id(driver, port)}"',
        f'driver = "{driver}"',
        f'port = "{port}"',
        f'interval = "{format_duration(cls.default_interval)}"',
    ]
    if driver == "pms5003":
        lines.append('model = "pms5003"  # or "pms7003": same frames, check the label')
    return "\n".join(lines) + "\n"


def _listen(port: str, listen: float) -> Found | None:
    transport = SerialTransport(port)
    transport.open()
    sds = FrameParser(sds011.FRAME, Counter())
    pms = FrameParser(pms5003.FRAME, Counter())
    try:
        end = time.monotonic() + listen
        next_ask = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= end:
                return None
            if now >= next_ask:
                transport.write(sds011.QUERY + sds011.GET_STATE + pms5003.PASSIVE_READ)
                next_ask = now + _ASK_EVERY
            data = transport.read(256, max(0.0, min(end, next_ask) - now))
            if not data:
                continue
            for frame in sds.feed(data):
                return Found(port, "sds011", _sds_detail(frame), sensor_snippet("sds011", port))
            for frame in pms.feed(data):
                return Found(port, "pms5003", _pms_detail(frame), sensor_snippet("pms5003", port))
    finally:
        transport.close()


def _sds_detail(frame: bytes) -> str:
    ident = sds011.device_id(frame).hex()
    if frame[1] == sds011.REPORT:
        pm2_5, pm10 = sds011.decode_pm(frame)
        return f"SDS011 id {ident}: PM2.5 {pm2_5:g}, PM10 {pm10:g} ug/m3"
    reply = sds011.decode_reply(frame)
    if reply.function == sds011.FN_SLEEP:
        state = "asleep" if reply.data[1] == sds011.SLEEP else "working"
        return f"SDS011 id {ident} ({state})"
    return f"SDS011 id {ident}"


def _pms_detail(frame: bytes) -> str:
    if len(frame) != pms5003.FRAME_LEN:
        return "Plantower PMS5003/PMS7003 (command acknowledged)"
    data = pms5003.decode(frame)
    return (
        f"Plantower PMS5003/PMS7003 (firmware {data.version:#04x}): PM2.5 {data.pm2_5} ug/m3, "
        f"{data.n0_3} particles > 0.3 um per 0.1 L"
    )


def probe_serial(
    ports: list[str], listen: float = 3.0, *, problems: list[str] | None = None
) -> list[Found]:
    """The sensors heard on `ports` within `listen` seconds each. Ports that cannot be opened
    (missing, busy, no permission) are skipped; their reasons go to `problems` if given."""
    found: list[Found] = []
    for port in ports:
        try:
            hit = _listen(port, listen)
        except SensorError as e:
            if problems is not None:
                problems.append(str(e))
            continue
        if hit is not None:
            found.append(hit)
    return found
