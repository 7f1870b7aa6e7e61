"""Plantower PMS5003 / PMS7003 particulate sensor on a UART, 9600 8N1 (3.3 V logic, 5 V fan).

The sensor is polled in passive mode with read requests; after power-up it is in active mode
and streams a frame every 0.2-2.3 s, so the driver sets passive mode at open, and again when
unsolicited frames show the sensor was reset. Both PM sets are reported, labelled plainly:
"CF=1" (factory calibration against a reference particle, Adafruit's "standard") as
pm*_cf1, and "atmospheric environment" (Adafruit's "env") as pm1/pm2_5/pm10 — the labels are
often swapped elsewhere. Right after a wake the sensor reports PM above zero while every
particle count is zero; such frames are warm-up and discarded. There is no state read-back
command: the passive-mode acknowledgement after a wake is the proof the sensor is listening.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from drivers import manifests
from drivers.serial_bus import FrameSpec, Sample, SerialSensor, Transport, serial_config
from gateway.core.fields import Field

__all__ = [
    "FRAME",
    "MODELS",
    "PMS5003",
    "QUANTITIES",
    "FrameError",
    "PMSData",
    "check_frame",
    "command",
    "decode",
]

# --- protocol (Plantower PMS5003 / PMS7003 datasheets, appendix I) ------------------------------

START = b"\x42\x4d"  # "BM"
DATA_LEN = 28  # length word of a data frame: 13 data words + checksum
ACK_LEN = 4  # length word of a command acknowledgement: cmd, data, checksum
FRAME_LEN = 4 + DATA_LEN  # 32 bytes
ACK_FRAME_LEN = 4 + ACK_LEN  # 8 bytes
COMMAND_LEN = 7  # 42 4D | CMD | DATAH DATAL | CS16

CMD_MODE = 0xE1  # data 0 = passive, 1 = active
CMD_READ = 0xE2  # passive read: answered with a data frame
CMD_SLEEP = 0xE4  # data 0 = sleep, 1 = wake
PASSIVE, ACTIVE = 0, 1
SLEEP, WAKE = 0, 1

MODELS = ("pms5003", "pms7003")  # same frames and commands


class FrameError(ValueError):
    """Bytes that are not a valid PMS data frame."""


def checksum(data: bytes) -> int:
    """16-bit sum of every byte before the checksum."""
    return sum(data) & 0xFFFF


def command(cmd: int, value: int = 0) -> bytes:
    """42 4D CMD DATAH DATAL, then the sum of those five bytes as a big-endian u16."""
    body = START + bytes([cmd]) + value.to_bytes(2, "big")
    return body + checksum(body).to_bytes(2, "big")


PASSIVE_MODE = command(CMD_MODE, PASSIVE)
ACTIVE_MODE = command(CMD_MODE, ACTIVE)
PASSIVE_READ = command(CMD_READ)
SLEEP_CMD = command(CMD_SLEEP, SLEEP)
WAKE_CMD = command(CMD_SLEEP, WAKE)


def frame_length(header: bytes) -> int | None:
    """42 4D and a big-endian length word: 28 (data) or 4 (acknowledgement)."""
    if header[:2] != START:
        return None
    n = int.from_bytes(header[2:4], "big")
    return 4 + n if n in (DATA_LEN, ACK_LEN) else None


def check_frame(frame: bytes) -> str | None:
    if len(frame) < 6 or frame_length(frame[:4]) != len(frame):
        return "resync"
    if checksum(frame[:-2]) != int.from_bytes(frame[-2:], "big"):
        return "checksum"
    return None


FRAME = FrameSpec("pms5003", START, 4, frame_length, check_frame)


@dataclass(frozen=True)
class PMSData:
    """The 13 data words of a frame. PM in ug/m3; counts of particles above the size in 0.1 L
    (= per dL); the reserved word carries the firmware version and an error code."""

    pm1_cf1: int
    pm2_5_cf1: int
    pm10_cf1: int
    pm1: int
    pm2_5: int
    pm10: int
    n0_3: int
    n0_5: int
    n1_0: int
    n2_5: int
    n5_0: int
    n10: int
    version: int
    error: int

    @property
    def warming_up(self) -> bool:
        """PM above zero while every count is zero: the first frames after a wake."""
        pm = (self.pm1_cf1, self.pm2_5_cf1, self.pm10_cf1, self.pm1, self.pm2_5, self.pm10)
        counts = (self.n0_3, self.n0_5, self.n1_0, self.n2_5, self.n5_0, self.n10)
        return any(pm) and not any(counts)

    @property
    def zero(self) -> bool:
        return not any(
            (self.pm1_cf1, self.pm2_5_cf1, self.pm10_cf1, self.pm1, self.pm2_5, self.pm10)
        ) and not any((self.n0_3, self.n0_5, self.n1_0, self.n2_5, self.n5_0, self.n10))


# the 12 data words in frame order
_WORDS = (
    "pm1_cf1",
    "pm2_5_cf1",
    "pm10_cf1",
    "pm1",
    "pm2_5",
    "pm10",
    "n0_3",
    "n0_5",
    "n1_0",
    "n2_5",
    "n5_0",
    "n10",
)


def decode(frame: bytes) -> PMSData:
    """Words 1-3: PM1.0/2.5/10 at CF=1; 4-6: the same for the atmospheric environment;
    7-12: counts above 0.3/0.5/1.0/2.5/5.0/10 um per 0.1 L; 13: version (high), error (low)."""
    problem = check_frame(frame)
    if problem is not None or len(frame) != FRAME_LEN:
        raise FrameError(f"not a valid PMS data frame ({problem or 'ack'}): {frame.hex(' ')}")
    words = {
        name: int.from_bytes(frame[i : i + 2], "big")
        for name, i in zip(_WORDS, range(4, 28, 2), strict=True)
    }
    return PMSData(**words, version=frame[28], error=frame[29])


def _is_data(frame: bytes) -> bool:
    return len(frame) == FRAME_LEN


def _ack_of(cmd: int) -> Any:
    def want(frame: bytes) -> bool:
        return len(frame) == ACK_FRAME_LEN and frame[4] == cmd

    return want


# --- the driver --------------------------------------------------------------------------------

#: quantity -> unit, in the order of the frame, from its manifest (drivers/manifests.py)
QUANTITIES: Mapping[str, str] = manifests.PMS5003.units()


class PMS5003(SerialSensor):
    """PMS5003 or PMS7003 in passive mode, optionally sleeping between reads."""

    name = "pms5003"
    default_interval = 150.0
    FRAME = FRAME
    CONFIG: ClassVar[Mapping[str, Field]] = {
        "model": Field(
            "str",
            "which Plantower sensor: pms5003 or pms7003 (same protocol; named in errors)",
            default="pms5003",
            choices=MODELS,
        ),
        **serial_config("/dev/serial0"),
    }

    def __init__(
        self,
        *,
        sensor_id: str,
        options: Mapping[str, Any],
        transport: Transport | None = None,
    ) -> None:
        super().__init__(sensor_id=sensor_id, options=options, transport=transport)
        self.model: str = str(self.options["model"])
        #: the last data frame, decoded (version and error code included)
        self.last: PMSData | None = None

    @property
    def quantities(self) -> Mapping[str, str]:
        return QUANTITIES

    def _passive(self) -> None:
        self.exchange(PASSIVE_MODE, _ack_of(CMD_MODE), f"{self.model} passive mode")

    def _configure(self) -> None:
        # Wake is harmless when awake, and the sensor cannot tell us whether it sleeps.
        self.send(WAKE_CMD)
        self._passive()
        self._woke()

    def _reassert_mode(self) -> None:
        self._passive()

    def _wake(self) -> None:
        self.send(WAKE_CMD)
        self._passive()  # acknowledged only by an awake sensor

    def _sleep(self) -> bool:
        self.exchange(SLEEP_CMD, _ack_of(CMD_SLEEP), f"{self.model} sleep")
        return True

    def _measure(self) -> Sample:
        data = decode(self.exchange(PASSIVE_READ, _is_data, f"{self.model} passive read"))
        self.last = data
        values = {q: float(getattr(data, q)) for q in QUANTITIES}
        warm = "warmup" if data.warming_up else "zero" if data.zero else None
        return Sample(values, warm)
