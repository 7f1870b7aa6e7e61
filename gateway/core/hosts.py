"""What the configuration rules need to know about a broker's host name."""

from __future__ import annotations


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine (plain MQTT to it never leaves the box)."""
    import ipaddress  # here: `status` checks the broker without the strict loader's imports

    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
