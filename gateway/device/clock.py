"""Is the wall clock trustworthy? A Raspberry Pi has no RTC: until NTP syncs, time may be off.

The kernel knows: adjtimex() returns TIME_ERROR while the clock is unsynchronised (the NTP
daemons, systemd-timesyncd included, clear it once they have disciplined the clock). timesyncd
also touches /run/systemd/timesync/synchronized. Reading never waits for either.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
import os
from dataclasses import dataclass

from gateway.core.health import Health
from gateway.device.service import Plain

log = logging.getLogger("gateway")

TIME_ERROR = 5
_TIMESYNC_FLAG = "/run/systemd/timesync/synchronized"
#: seconds between two looks at the clock
CLOCK_POLL = 5.0


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


class ClockWatch(Plain):
    """Whether each reading's time can be trusted: every reading is stamped with the clock state
    of the moment it was taken, and a batch never mixes the two (spec section 3, key 7)."""

    def __init__(self, mode: str, *, health: Health) -> None:
        self.mode = mode
        self.health = health
        self.state = detect(mode)
        health.clock_synced, health.clock_source = self.state.synced, self.state.source

    def now(self) -> tuple[bool, str]:
        """(synced, source) for a reading taken now."""
        return self.state.synced, self.state.source

    def source(self) -> str:
        return self.state.source

    async def run(self) -> None:
        while True:
            await asyncio.sleep(CLOCK_POLL)
            state = await asyncio.to_thread(detect, self.mode)
            if state != self.state:
                log.info(
                    "clock is now %s (%s)", "synced" if state.synced else "unsynced", state.source
                )
                self.state = state
            self.health.clock_synced, self.health.clock_source = state.synced, state.source
