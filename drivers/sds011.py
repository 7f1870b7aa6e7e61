"""Nova Fitness SDS011 particulate sensor (PM2.5, PM10) on a UART, 9600 8N1.

The sensor is polled in query mode: at open the driver reads the sleep state (the only command
a sleeping sensor answers), wakes it if needed, then sets query mode and a continuous working
period explicitly — a sensor left in active mode, or in a working period, by another tool must
neither flood us with stale frames nor look dead. Duty cycling uses the real sleep/work command
and reads the state back, because sleep is sometimes ignored and "wake on any byte" is
unreliable. An all-zero payload right after a wake is warm-up, not clean air.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from drivers import manifests
from drivers.serial_bus import FrameSpec, Sample, SerialSensor, Transport, serial_config
from gateway.core.errors import SensorError
from gateway.core.fields import Field

__all__ = [
    "FRAME",
    "QUANTITIES",
    "SDS011",
    "FrameError",
    "Reply",
    "check_frame",
    "command",
    "decode_pm",
    "decode_reply",
]

# --- protocol (Nova Fitness "Laser Dust Sensor Control Protocol" V1.3) --------------------------

HEAD = 0xAA
TAIL = 0xAB
HOST = 0xB4  # command from the host
REPORT = 0xC0  # data report (active mode, or the answer to a query)
REPLY = 0xC5  # answer to a command
FRAME_LEN = 10  # AA | C0/C5 | D1..D6 | CS | AB
COMMAND_LEN = 19  # AA B4 | D1..D13 | ID1 ID2 | CS | AB

# D1 of a command: the function
FN_MODE = 0x02  # reporting mode: D2 get/set, D3 0 = active, 1 = query
FN_QUERY = 0x04  # query data: answered with a C0 report
FN_SET_ID = 0x05
FN_SLEEP = 0x06  # sleep/work: D2 get/set, D3 0 = sleep, 1 = work
FN_FIRMWARE = 0x07  # answer D2..D4 = YY MM DD
FN_PERIOD = 0x08  # working period: D3 0 = continuous, n = work 30 s, sleep n*60-30 s

GET, SET = 0, 1
MODE_ACTIVE, MODE_QUERY = 0, 1
SLEEP, WORK = 0, 1
ALL_SENSORS = b"\xff\xff"  # device ID FFFF addresses every sensor


class FrameError(ValueError):
    """Bytes that are not a valid SDS011 frame of the expected kind."""


def checksum(data: bytes) -> int:
    """CS = low byte of the sum (D1..D6 of a report, D1..ID2 of a command)."""
    return sum(data) & 0xFF


def command(function: int, *data: int, device_id: bytes = ALL_SENSORS) -> bytes:
    """The 19-byte command: AA B4, D1 = function, D2.. = data (zero-padded to D13), the target
    device ID, CS = sum(bytes 2..16) & 0xFF, AB."""
    body = bytes([function, *data]).ljust(13, b"\0") + device_id
    if len(body) != 15:
        raise ValueError("at most 12 data bytes and a 2-byte device id")
    return bytes([HEAD, HOST]) + body + bytes([checksum(body), TAIL])


QUERY = command(FN_QUERY)
SET_QUERY_MODE = command(FN_MODE, SET, MODE_QUERY)
SET_ACTIVE_MODE = command(FN_MODE, SET, MODE_ACTIVE)
GET_STATE = command(FN_SLEEP, GET)
SLEEP_CMD = command(FN_SLEEP, SET, SLEEP)
WORK_CMD = command(FN_SLEEP, SET, WORK)
GET_FIRMWARE = command(FN_FIRMWARE)


def set_period(minutes: int) -> bytes:
    return command(FN_PERIOD, SET, minutes)


def frame_length(header: bytes) -> int | None:
    """Every report and reply is 10 bytes; any other second byte is not an SDS011 frame."""
    return FRAME_LEN if header[0] == HEAD and header[1] in (REPORT, REPLY) else None


def check_frame(frame: bytes) -> str | None:
    """None for a valid frame, else "resync" (head, kind or tail wrong) or "checksum"."""
    if (
        len(frame) != FRAME_LEN
        or frame[0] != HEAD
        or frame[1] not in (REPORT, REPLY)
        or frame[9] != TAIL
    ):
        return "resync"
    if checksum(frame[2:8]) != frame[8]:
        return "checksum"
    return None


FRAME = FrameSpec("sds011", bytes([HEAD]), 2, frame_length, check_frame)


def decode_pm(frame: bytes) -> tuple[float, float]:
    """(PM2.5, PM10) in ug/m3 from a C0 report: PM2.5 = u16le(D1,D2)/10, PM10 = u16le(D3,D4)/10."""
    problem = check_frame(frame)
    if problem is not None:
        raise FrameError(f"not a valid SDS011 frame ({problem}): {frame.hex(' ')}")
    if frame[1] != REPORT:
        raise FrameError(f"not a data report: {frame.hex(' ')}")
    pm2_5 = int.from_bytes(frame[2:4], "little") / 10.0
    pm10 = int.from_bytes(frame[4:6], "little") / 10.0
    return pm2_5, pm10


def device_id(frame: bytes) -> bytes:
    """D5, D6 of any report or reply."""
    return frame[6:8]


def is_zero(frame: bytes) -> bool:
    """All-zero PM payload: what a freshly woken sensor reports."""
    return not any(frame[2:6])


@dataclass(frozen=True)
class Reply:
    """A C5 answer: D1 echoes the function, D2..D4 its arguments or the state."""

    function: int
    data: bytes
    device_id: bytes


def decode_reply(frame: bytes) -> Reply:
    problem = check_frame(frame)
    if problem is not None:
        raise FrameError(f"not a valid SDS011 frame ({problem}): {frame.hex(' ')}")
    if frame[1] != REPLY:
        raise FrameError(f"not a command reply: {frame.hex(' ')}")
    return Reply(frame[2], frame[3:6], frame[6:8])


def _is_report(frame: bytes) -> bool:
    return frame[1] == REPORT


def _reply_to(function: int, op: int) -> Any:
    def want(frame: bytes) -> bool:
        return frame[1] == REPLY and frame[2] == function and frame[3] == op

    return want


# --- the driver --------------------------------------------------------------------------------

#: quantity -> unit, from its manifest (drivers/manifests.py)
QUANTITIES: Mapping[str, str] = manifests.SDS011.units()


class SDS011(SerialSensor):
    """SDS011 in query mode, optionally sleeping between reads."""

    name = "sds011"
    default_interval = 150.0  # sensor.community reads every 145 s
    FRAME = FRAME
    CONFIG: ClassVar[Mapping[str, Field]] = serial_config("/dev/ttyUSB0")

    def __init__(
        self,
        *,
        sensor_id: str,
        options: Mapping[str, Any],
        transport: Transport | None = None,
    ) -> None:
        super().__init__(sensor_id=sensor_id, options=options, transport=transport)
        #: device ID (D5, D6) of the last frame, e.g. b"\xa1\x60"
        self.device_id: bytes | None = None

    @property
    def quantities(self) -> Mapping[str, str]:
        return QUANTITIES

    def _state(self) -> int:
        reply = self.exchange(GET_STATE, _reply_to(FN_SLEEP, GET), "get sleep state")
        self.device_id = device_id(reply)
        return reply[4]

    def _configure(self) -> None:
        # A sleeping sensor answers only 06, so the state comes first.
        if self._state() == SLEEP:
            self._wake()
        self._reassert_mode()
        reply = self.exchange(set_period(0), _reply_to(FN_PERIOD, SET), "set working period")
        if reply[4] != 0:
            raise SensorError(f"{self.port}: SDS011 did not set a continuous working period")
        self._woke()

    def _reassert_mode(self) -> None:
        reply = self.exchange(SET_QUERY_MODE, _reply_to(FN_MODE, SET), "set query mode")
        if reply[4] != MODE_QUERY:
            raise SensorError(f"{self.port}: SDS011 did not switch to query mode")

    def _wake(self) -> None:
        for _ in range(2):
            self.exchange(WORK_CMD, _reply_to(FN_SLEEP, SET), "work")
            if self._state() == WORK:
                return
            self.counters["wake-ignored"] += 1
        raise SensorError(f"{self.port}: SDS011 does not wake up")

    def _sleep(self) -> bool:
        for _ in range(2):
            self.exchange(SLEEP_CMD, _reply_to(FN_SLEEP, SET), "sleep")
            if self._state() == SLEEP:
                return True
            self.counters["sleep-ignored"] += 1
        return False

    def _measure(self) -> Sample:
        frame = self.exchange(QUERY, _is_report, "query data")
        self.device_id = device_id(frame)
        pm2_5, pm10 = decode_pm(frame)
        return Sample({"pm2_5": pm2_5, "pm10": pm10}, "zero" if is_zero(frame) else None)
