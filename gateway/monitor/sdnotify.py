"""The systemd notification protocol (sd_notify(3)) in the few lines it takes.

READY=1 when the gateway is up, WATCHDOG=1 from a healthy main loop, STATUS= a one-line
summary. Outside systemd (no NOTIFY_SOCKET) every call is a no-op. A datagram to a socket path,
or to an abstract socket when the path starts with '@'.
"""

from __future__ import annotations

import os
import socket


def notify(*fields: str) -> bool:
    """Send `fields` (e.g. "READY=1", "STATUS=...") to systemd; False when not under it."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect(address)
            s.sendall("\n".join(fields).encode())
    except OSError:
        return False  # systemd gone or the socket unreadable: nothing to tell anyone
    return True


def watchdog_interval() -> float | None:
    """Seconds within which systemd wants WATCHDOG=1 (WatchdogSec=), or None when it does not
    watch this process."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None  # meant for another process (we were started by one that is watched)
    try:
        seconds = int(usec) / 1e6
    except ValueError:
        return None
    return seconds if seconds > 0 else None
