"""The import paths of before the packages were cut by what they hold, kept working.

`gateway.daemon`, `gateway.schema`, `gateway.verify`... were modules directly under `gateway/`;
third-party plug-ins (which import `Field`, `Reading` and the errors), operators' scripts and
verifiers written against them import those names. One finder, installed when `gateway` is
imported, answers each old name with the module that now holds it: the very same module object,
so `gateway.schema.Field is gateway.core.fields.Field`. Names that are packages now (`config`,
`monitor`, `cli`) cannot be answered this way and are not.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
from types import ModuleType

# typing.TYPE_CHECKING without importing typing (~3 ms at every start); mypy reads it the same
TYPE_CHECKING = False
if TYPE_CHECKING:
    from importlib.abc import Loader as _Loader
else:
    _Loader = object

#: old module (under `gateway.`) -> where it lives now
MOVED = {
    "errors": "core.errors", "units": "core.units", "schema": "core.fields",
    "files": "core.files", "hosts": "core.hosts", "reading": "core.reading",
    "health": "core.health", "plugins": "core.plugins",
    "dcbor": "wire.dcbor", "cose": "wire.cose", "merkle": "wire.merkle",
    "identity": "wire.identity", "payloads": "wire.payloads", "proof": "wire.proof",
    "verify": "wire.verify",
    "config_check": "config.check", "config_locate": "config.locate",
    "config_render": "config.render", "config_schema": "config.sections",
    "model_bundle": "models.bundle", "model_updates": "models.store",
    "homeassistant": "monitor.homeassistant", "sdnotify": "monitor.sdnotify",
    "status": "monitor.status",
    "daemon": "device.daemon", "sampler": "device.sampler", "pipeline": "device.commit",
    "spool": "device.spool", "highwater": "device.highwater", "lockfile": "device.lockfile",
    "uplink": "device.uplink", "head": "device.head", "clock": "device.clock",
    "demo": "cli.demo", "firstboot": "cli.firstboot",
}  # fmt: skip


class _Alias(_Loader):
    """Finder and loader of the old names (the import system's protocols, without importing
    importlib.abc: every start, `status` included, imports this)."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, name = fullname.rpartition(".")
        if package != "gateway" or name not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module("gateway." + MOVED[spec.name.rpartition(".")[2]])

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module under its new name has run already."""


def install() -> None:
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.append(_Alias())  # last: a module that exists under its name wins
