"""Is the wall clock trustworthy? A Raspberry Pi has no RTC: until NTP syncs, time may be off.

The kernel knows: adjtimex() returns TIME_ERROR while the clock is unsynchronised (the NTP
daemons, systemd-timesyncd included, clear it once they have disciplined the clock). timesyncd
also touches /run/systemd/timesync/synchronized. Reading never waits for either.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
from dataclasses import dataclass

TIME_ERROR = 5
_TIMESYNC_FLAG = "/run/systemd/timesync/synchronized"


@dataclass(frozen=True)
class ClockState:
    synced: bool
    source: str


@functools.cache
def _libc() -> ctypes.CDLL | None:
    # Once per process: find_library runs /sbin/ldconfig each time it is called.
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None


def _kernel_synced() -> bool | None:
    libc = _libc()
    if libc is None:
        return None
    try:
        # struct timex is ~208 bytes on 64-bit; modes = 0 only reads. Oversize the buffer.
        buf = ctypes.create_string_buffer(512)
        state = int(libc.adjtimex(buf))
    except (OSError, AttributeError):
        return None
    if state < 0:
        return None
    return state != TIME_ERROR


def detect(mode: str = "auto") -> ClockState:
    """The clock state under a configured mode: "auto", "synced" (operator vouches for the
    clock, e.g. a GNSS-disciplined one) or "unsynced"."""
    if mode == "synced":
        return ClockState(True, "config")
    if mode == "unsynced":
        return ClockState(False, "none")
    if os.path.exists(_TIMESYNC_FLAG):
        return ClockState(True, "ntp")
    kernel = _kernel_synced()
    if kernel:
        return ClockState(True, "ntp")
    return ClockState(False, "none")
