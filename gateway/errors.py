"""The gateway's small, classified error set.

Library code raises these; only the edges (CLI, daemon) turn them into one line and an exit code.
Each error knows whether retrying can help (`transient`) and which exit code the CLI uses.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    transient = False
    exit_code = 1


class ConfigError(GatewayError, ValueError):
    """The configuration is unusable; `problems` lists every finding, each naming its place."""

    exit_code = 2

    def __init__(self, problems: list[str], *, source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "; ".join(self.problems))


class IdentityError(GatewayError):
    """The device key is missing, unreadable, malformed or too widely readable."""

    exit_code = 3


class SpoolError(GatewayError):
    """The spool cannot be used (corrupt, not ours, disk trouble)."""

    exit_code = 4


class KeyInUse(GatewayError):
    """Another gateway signs with this device's key (seen on the broker). Its own exit code:
    the systemd unit does not restart on it (a restart would take turns on one chain)."""

    exit_code = 5


class SensorError(GatewayError, OSError):
    """A sensor did not deliver a valid reading this time; the sampler retries with backoff."""

    transient = True


class UplinkError(GatewayError, ConnectionError):
    """The broker could not be reached or refused us; the uplink retries with backoff."""

    transient = True


class VerifyError(GatewayError, ValueError):
    """A message failed verification (spec section 9); `kind` is the finding's short name."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(f"{kind}: {detail}")
