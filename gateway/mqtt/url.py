"""Broker URLs: the one parser behind `[uplink] url`, the attestor's `[broker] url` and every
`--broker` option (verify, demo, dashboard).

Light on purpose: `depin-gateway status` reads the broker of a configuration with it, so it
imports neither the MQTT clients nor ssl.
"""

from __future__ import annotations

from typing import NamedTuple
from urllib.parse import urlsplit

from gateway.core.errors import ConfigError
from gateway.core.hosts import is_loopback

PORTS = {"mqtt": 1883, "mqtts": 8883}


class BrokerUrlError(ConfigError):
    """A broker URL that is not accepted. `where` names the setting or option it came from,
    `reason` says what is wrong (and is the whole message a configuration problem needs)."""

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__([f"{where}: {reason}"])


class BrokerUrl(NamedTuple):
    """Where a broker is: host (lower case; an IPv6 address without brackets), port, TLS."""

    host: str
    port: int
    tls: bool

    @property
    def label(self) -> str:
        """The URL in full, for logs and pages (a URL never holds credentials here)."""
        scheme = "mqtts" if self.tls else "mqtt"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    @property
    def plain_off_machine(self) -> bool:
        """Plain-text MQTT to a broker that is not on this machine: readings and credentials
        would cross the network unencrypted."""
        return not self.tls and not is_loopback(self.host)


def parse(
    url: str,
    *,
    where: str,
    bare: bool = False,
    tls: bool = False,
    credentials: str | None = None,
) -> BrokerUrl:
    """The broker a URL names; BrokerUrlError (a ConfigError) naming `where` otherwise.

    Accepted: `mqtt://host[:port]` (plain text, port 1883 by default) and `mqtts://host[:port]`
    (TLS, 8883), the scheme in any case, with or without one trailing `/`. The host is a name,
    an IPv4 address or an IPv6 address in brackets (`mqtt://[::1]:1883`). The port, when
    given, is decimal digits from 1 to 65535.

    With `bare` (command-line options only; a configuration file always names its scheme) a
    string without `://` is read as `mqtt://` followed by it: `127.0.0.1:1884`, `[::1]`.
    With `tls` the connection uses TLS whatever the scheme (a CA file given on the command
    line implies it), and the default port is 8883.

    Rejected, each with its own message: any other scheme (`tcp://`, `ssl://`, `http://`...)
    or none; no host; an IPv6 address without brackets; an empty, non-numeric, 0 or too large
    port; credentials in the URL (`credentials` says where they go instead); a path other than
    `/`, a query or a fragment; spaces and control characters anywhere (urlsplit would silently
    drop a newline or a tab).
    """
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise BrokerUrlError(where, f"spaces or control characters in {url!r}")
    text = url if not bare or "://" in url else "mqtt://" + url
    try:
        parts = urlsplit(text)
        hostname = parts.hostname  # brackets checked here (an IPv6 address inside them)
    except ValueError as e:
        raise BrokerUrlError(where, f"malformed url {url!r}: {e}") from None
    scheme = parts.scheme.lower()
    if "://" not in text:
        raise BrokerUrlError(where, f"no scheme in {url!r}; use mqtt:// or mqtts://")
    if scheme not in PORTS:
        raise BrokerUrlError(
            where, f"unsupported scheme {scheme}:// in {url!r}; use mqtt:// or mqtts://"
        )
    hostport = parts.netloc.rpartition("@")[2]
    if hostport.count(":") > 1 and not hostport.startswith("["):
        raise BrokerUrlError(
            where, f"an IPv6 address goes in brackets (mqtt://[::1]:1883), not as in {url!r}"
        )
    if not hostname:
        raise BrokerUrlError(where, f"no host in {url!r}; expected mqtt[s]://host[:port]")
    port = _port(hostport)
    if port == -1:
        raise BrokerUrlError(where, f"invalid port in {url!r}; expected 1..65535")
    if parts.username is not None or parts.password is not None:
        hint = f"; {credentials}" if credentials else ""
        raise BrokerUrlError(where, f"credentials do not belong in the url{hint}")
    if parts.path not in ("", "/") or parts.query or parts.fragment or "?" in text or "#" in text:
        raise BrokerUrlError(where, f"unexpected path or query in {url!r}")
    secure = tls or scheme == "mqtts"
    return BrokerUrl(hostname, port or (PORTS["mqtts"] if secure else PORTS["mqtt"]), secure)


def _port(hostport: str) -> int | None:
    """The port of `host[:port]`: None when there is none, -1 when it is not 1..65535 in
    decimal digits (urlsplit takes an empty one as none, and int() would take "+1" or "١")."""
    if hostport.startswith("["):
        _, _, after = hostport.partition("]")
        if not after:
            return None
        if not after.startswith(":"):
            return -1
        digits = after[1:]
    elif ":" in hostport:
        digits = hostport.rpartition(":")[2]
    else:
        return None
    if not (digits.isascii() and digits.isdigit()) or not 1 <= int(digits) <= 65535:
        return -1
    return int(digits)
