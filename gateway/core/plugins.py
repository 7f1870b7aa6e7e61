"""Plug-in discovery through entry points; built-ins register exactly like third parties.

An entry point of `depin_gateway.drivers` or `depin_gateway.modules` names the plug-in's
manifest (gateway/core/manifest.py), e.g. `sds011 = "drivers.manifests:SDS011"`; `manifest`,
`driver` and `module` return it, `driver_class` and `module_class` the class it builds the
plug-in from. An entry point that names a class, as all did before manifests, still loads: its
manifest is derived from the class (name, kind, factory and config; no quantities, no sample, no
README) and says so (`derived`).

The entry points are read from the installed distributions' metadata, every `entry_points.txt`
of a `*.dist-info` or `*.egg-info` directory on sys.path, the way `importlib.metadata` finds
them (the first distribution of a name on sys.path counts; among distributions registering the
same plug-in name, the last one found), but without importing `importlib.metadata`: its import
(the email package comes with it) and its scan of every distribution's metadata cost more than
the rest of `depin-gateway status`, and every start of the daemon pays them
(bench/startup.py). Distributions inside zip files on sys.path are not looked into.
tests/unit/test_plugins.py checks that the two ways agree.
"""

from __future__ import annotations

import os
import re
import sys
from functools import cache
from typing import Any

from gateway.core.manifest import Kind, Manifest, import_object

DRIVER_GROUP = "depin_gateway.drivers"
MODULE_GROUP = "depin_gateway.modules"
#: the kind of plug-in each group registers
KIND: dict[str, Kind] = {DRIVER_GROUP: "driver", MODULE_GROUP: "module"}

_INFO = (".dist-info", ".egg-info")
#: an entry point's object reference: `module[:attr.attr] [extras]`
_VALUE = re.compile(r"(?P<module>[\w.]+)\s*(:\s*(?P<attr>[\w.]+)\s*)?((?P<extras>\[.*\])\s*)?$")


def _normalize(name: str) -> str:
    """A distribution's name as importlib.metadata compares them (PEP 503, dashes as
    underscores)."""
    return re.sub(r"[-_.]+", "-", name).lower().replace("-", "_")


def _metadata_dirs() -> list[str]:
    """The metadata directory of every distribution, first on sys.path first; a name found
    again later on sys.path is shadowed, as for importlib.metadata."""
    seen: set[str] = set()
    found: list[str] = []
    for root in sys.path:
        folder = root or "."
        try:
            children = os.listdir(folder)
        except OSError:
            continue  # not a directory: a zip file, or gone
        by_name: dict[str, list[str]] = {}
        for child in children:
            low = child.lower()
            if low.endswith(_INFO):
                by_name.setdefault(_normalize(low.rpartition(".")[0].partition("-")[0]), []).append(
                    os.path.join(folder, child)
                )
        base = os.path.basename(folder).lower()
        if base.endswith(".egg"):  # an unzipped egg: its metadata is EGG-INFO inside
            for child in children:
                if child.lower() == "egg-info":
                    name = _normalize(base.rpartition(".")[0].partition("-")[0])
                    by_name.setdefault(name, []).append(os.path.join(folder, child))
        for name, paths in by_name.items():
            for path in paths:
                if name not in seen:
                    seen.add(name)
                    found.append(path)
    return found


def _sections(text: str) -> dict[str, list[tuple[str, str]]]:
    """The (name, value) pairs of each section of an entry_points.txt."""
    sections: dict[str, list[tuple[str, str]]] = {}
    pairs: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("[") and line.endswith("]"):
            pairs = sections.setdefault(line[1:-1].strip(), [])
        elif pairs is not None:
            name, _, value = line.partition("=")
            pairs.append((name.strip(), value.strip()))
    return sections


@cache
def _load() -> dict[str, dict[str, str]]:
    """Group -> plug-in name -> object reference (`module:attr`): one scan for all groups."""
    found: dict[str, dict[str, str]] = {}
    for path in _metadata_dirs():
        try:
            with open(os.path.join(path, "entry_points.txt"), encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError):
            continue  # no entry points, or an egg-info that is a file
        for group, pairs in _sections(text).items():
            found.setdefault(group, {}).update(pairs)
    return found


def entries(group: str) -> dict[str, str]:
    """Plug-in name -> object reference of `group`."""
    return _load().get(group, {})


def names(group: str) -> list[str]:
    return sorted(entries(group))


def load(group: str, name: str) -> object:
    """The object the entry point `name` of `group` names, as it is; KeyError when there is
    none."""
    value = entries(group)[name]
    m = _VALUE.match(value)
    if m is None:
        raise ValueError(f"entry point {name} = {value!r} in {group} is malformed")
    return import_object(m["module"], m["attr"] or "")


def manifest(group: str, name: str) -> Manifest:
    """The manifest of plug-in `name` of `group`, derived from the class when the entry point
    names one; KeyError when there is none. Imports the module the entry point names, and no
    other: a manifest that names its factory leaves the plug-in's code unimported."""
    kind = KIND[group]
    obj = load(group, name)
    if isinstance(obj, Manifest):
        if (obj.kind, obj.name) != (kind, name):
            raise ValueError(
                f"entry point {name} in {group} names the manifest of {obj.kind} {obj.name!r}"
            )
        return obj
    if isinstance(obj, type):
        return Manifest.of_class(obj, name=name, kind=kind)
    raise TypeError(
        f"entry point {name} = {entries(group)[name]!r} in {group} names neither a manifest "
        f"nor a class but {type(obj).__name__}"
    )


def drivers() -> list[str]:
    return names(DRIVER_GROUP)


def modules() -> list[str]:
    return names(MODULE_GROUP)


def driver(name: str) -> Manifest:
    return manifest(DRIVER_GROUP, name)


def module(name: str) -> Manifest:
    return manifest(MODULE_GROUP, name)


def driver_class(name: str) -> type[Any]:
    """The class of driver `name` (`driver(name).factory`)."""
    return driver(name).factory


def module_class(name: str) -> type[Any]:
    """The class of detection module `name` (`module(name).factory`)."""
    return module(name).factory
