"""What the daemon composes: services, each opened, run and closed the same way.

The gateway enters every service in order before any of them runs (the spool opens first), runs
each one's `run` in one task group until it is told to stop, and exits them in reverse order
once every task has ended (the spool closes last). A service's `run` never ends by itself while
the gateway runs; one that raises stops the gateway.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import TracebackType
from typing import Protocol, Self


class Service(Protocol):
    async def __aenter__(self) -> object: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    async def run(self) -> None: ...


class Plain:
    """A service with nothing to open or close."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None


class Broker(Protocol):
    """The uplink as the services beside the reading's way use it: the device's topics, their
    own messages published while connected, a fresh birth message when the modules changed."""

    @property
    def topics(self) -> Mapping[str, str]: ...

    async def publish(
        self, topic: str, payload: bytes, *, qos: int = 0, retain: bool = True
    ) -> bool: ...

    def announce(self) -> None: ...
