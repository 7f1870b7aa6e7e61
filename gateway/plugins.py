"""Plug-in discovery through entry points; built-ins register exactly like third parties."""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points
from typing import Any

DRIVER_GROUP = "depin_gateway.drivers"
MODULE_GROUP = "depin_gateway.modules"


@cache
def _load(group: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for ep in entry_points(group=group):
        found[ep.name] = ep
    return found


def names(group: str) -> list[str]:
    return sorted(_load(group))


def load(group: str, name: str) -> Any:
    """The class registered as `name` in `group`; KeyError when there is none."""
    return _load(group)[name].load()


def drivers() -> list[str]:
    return names(DRIVER_GROUP)


def modules() -> list[str]:
    return names(MODULE_GROUP)


def driver_class(name: str) -> Any:
    return load(DRIVER_GROUP, name)


def module_class(name: str) -> Any:
    return load(MODULE_GROUP, name)
