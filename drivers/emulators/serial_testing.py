"""Test scaffolding for the serial chips, kept beside their emulators so that every test of a
serial driver uses the same set-up instead of a copy of it.

- frames built per the datasheets, independently of the drivers' code (`sds011_report`,
  `pms5003_frame`, `pms5003_ack`, and the SDS011 datasheet's example report);
- a chip served on a real pseudo-terminal behind a stable link (`serve_sds011`,
  `serve_pms5003`), past its power-up zeros and warm-up unless a test asks for them;
- the real driver configured for that port (`sds011_driver`, `pms5003_driver`): short timeouts,
  no warm-up and no duty cycle unless a test asks for them;
- what the driver read (`values`) beside what the chip's last report meant (`sds011_meant`,
  `pms5003_meant`).

Plain functions that import no test framework, so that importing this module never needs one;
the pytest fixtures built on them are in tests/conftest.py.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from drivers import pms5003
from drivers.base import Measurement
from drivers.emulators.pms5003 import PMS5003Chip
from drivers.emulators.pty import PtyServer
from drivers.emulators.sds011 import SDS011Chip
from drivers.pms5003 import PMS5003
from drivers.sds011 import SDS011

__all__ = [
    "PMS5003_LINK",
    "SDS011_EXAMPLE",
    "SDS011_LINK",
    "pms5003_ack",
    "pms5003_driver",
    "pms5003_frame",
    "pms5003_meant",
    "sds011_driver",
    "sds011_meant",
    "sds011_report",
    "serve_pms5003",
    "serve_sds011",
    "values",
]

#: the example report of the SDS011 datasheet (docs/sensors/sds011.md): PM2.5 123.6, PM10 261.8,
#: device ID A160
SDS011_EXAMPLE = bytes.fromhex("aa c0 d4 04 3a 0a a1 60 1d ab")

#: where the chips are plugged in tests, named as in life: an SDS011 on a USB adapter, a PMS5003
#: on the Pi's UART
SDS011_LINK = "ttyUSB0"
PMS5003_LINK = "serial0"


# --- frames per the datasheets ---------------------------------------------------------------


def sds011_report(pm2_5_raw: int, pm10_raw: int, ident: bytes = b"\xa1\x60") -> bytes:
    """A C0 data report: AA C0, PM2.5 and PM10 in tenths (little-endian), the device ID, the
    sum of those six bytes, AB."""
    payload = pm2_5_raw.to_bytes(2, "little") + pm10_raw.to_bytes(2, "little") + ident
    return b"\xaa\xc0" + payload + bytes([sum(payload) % 256, 0xAB])


def pms5003_frame(words: Sequence[int], version: int = 0x97, error: int = 0) -> bytes:
    """A data frame: 42 4D, length 28, 12 big-endian data words, version and error bytes, and
    the 16-bit sum of every byte before it."""
    body = struct.pack(">2sH12HBB", b"BM", 28, *words, version, error)
    return body + struct.pack(">H", sum(body))


def pms5003_ack(cmd: int, data: int) -> bytes:
    """The acknowledgement of a command: 42 4D, length 4, the command and its data, the sum."""
    body = struct.pack(">2sHBB", b"BM", 4, cmd, data)
    return body + struct.pack(">H", sum(body))


# --- a chip on a pseudo-terminal, and its driver ---------------------------------------------


def _settled(chip: dict[str, Any]) -> dict[str, Any]:
    # Most tests are about the bytes, not the warm-up: without zero frames and warm-up the
    # chip's first report already means what it says.
    return {"warmup": 0.0, "zero_for": 0.0, **chip}


def serve_sds011(link: Path, **chip: Any) -> PtyServer[SDS011Chip]:
    """An SDS011 (options `chip`) served and started behind `link`; the caller stops it."""
    return PtyServer(SDS011Chip(seed=3, **_settled(chip)), link=link).start()


def serve_pms5003(link: Path, **chip: Any) -> PtyServer[PMS5003Chip]:
    """A PMS5003 (options `chip`) served and started behind `link`; the caller stops it."""
    return PtyServer(PMS5003Chip(seed=5, **_settled(chip)), link=link).start()


def _driver_options(port: str, options: dict[str, Any]) -> dict[str, Any]:
    # A short timeout keeps the fault tests quick (each failed read costs ATTEMPTS of them).
    return {"port": port, "timeout": 0.3, "warmup": 0.0, "duty_cycle": False, **options}


def sds011_driver(port: str, **options: Any) -> SDS011:
    """The SDS011 driver for `port`, not yet opened."""
    return SDS011(sensor_id="pm", options=_driver_options(port, options))


def pms5003_driver(port: str, **options: Any) -> PMS5003:
    """The PMS5003 driver for `port`, not yet opened."""
    return PMS5003(sensor_id="pm", options=_driver_options(port, options))


# --- what was read, and what was meant -------------------------------------------------------


def values(measurements: Iterable[Measurement]) -> dict[str, float | None]:
    """Quantity -> value of one read."""
    return {m.quantity: m.value for m in measurements}


def sds011_meant(chip: SDS011Chip) -> dict[str, float | None]:
    """What the chip's last report meant, as the driver's values; it must be past warm-up."""
    last = chip.last
    if last is None or last.warm:
        raise AssertionError(f"the chip sent no report past its warm-up: {last}")
    return {"pm2_5": last.pm2_5, "pm10": last.pm10}


def pms5003_meant(chip: PMS5003Chip) -> dict[str, float | None]:
    """What the chip's last data frame meant, as the driver's values; it must be past warm-up."""
    last = chip.last
    if last is None or last.warm:
        raise AssertionError(f"the chip sent no frame past its warm-up: {last}")
    return {q: float(last.values[q]) for q in pms5003.QUANTITIES}
