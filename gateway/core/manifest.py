"""What a plug-in tells the gateway about itself: its manifest, the object its entry point names.

    [project.entry-points."depin_gateway.modules"]
    spikes = "gateway.modules.spikes:MANIFEST"

A manifest holds the plug-in's name and kind (`driver` or `module`), its factory (the class the
gateway builds it from), its typed options (the `Field`s of the factory's `CONFIG`), for a
driver the quantities it reports with the chip's facts the detection modules judge them by
(unit, resolution, range), and the names of its sample (a TOML fragment: the plug-in's table as
a configuration file shows it) and of its README (a page listing every option).

The factory may be given as the class or named as `"package.module:Class"`. Named, the manifest
loads without the plug-in's code, which is imported at the first use of `factory` or `config`:
every start of the gateway reads every driver's manifest (the modules judge readings by the
quantities of all of them), so a driver's manifest belongs in a module that imports little.

The sample and the README are named relative to the directory of the factory's module, i.e.
beside the plug-in's code (a README may lie elsewhere in the source tree, `../docs/x.md`: it is
read by people and by the tests, and need not be installed; the sample must be installed).

An entry point that names a class (the contract before manifests) still loads: the registry
derives a manifest from the class (`Manifest.of_class`: name, kind, factory and config; no
quantities, no sample, no README) and marks it `derived`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, get_args

from gateway.core.fields import Field

if TYPE_CHECKING:  # pathlib only where a path is asked for: not on every start's way
    from pathlib import Path

Kind = Literal["driver", "module"]
KINDS: tuple[Kind, ...] = get_args(Kind)


class Quantity:
    """One quantity a driver reports: its SenML unit and the chip's facts about it.

    `resolution`: the smallest step its values mean; two values closer than half of it are the
    same reading. `range`: the lowest and highest value the chip can report. None: not stated,
    the detection modules then judge the quantity by their own fallbacks. Read-only; a plain
    class rather than a dataclass, whose making would cost every start a millisecond.
    """

    __slots__ = ("range", "resolution", "unit")

    unit: str
    resolution: float | None
    range: tuple[float, float] | None

    def __init__(
        self,
        unit: str,
        resolution: float | None = None,
        range: tuple[float, float] | None = None,
    ) -> None:
        if not isinstance(unit, str) or not unit:
            raise ValueError(f"unit must be a SenML unit name, got {unit!r}")
        if resolution is not None and not (
            _number(resolution) and math.isfinite(resolution) and resolution > 0
        ):
            raise ValueError(f"resolution must be a positive number, got {resolution!r}")
        if range is not None and not (
            isinstance(range, tuple)
            and len(range) == 2
            and all(_number(x) and math.isfinite(x) for x in range)
            and range[0] < range[1]
        ):
            raise ValueError(f"range must be (low, high) with low < high, got {range!r}")
        setter = object.__setattr__
        setter(self, "unit", unit)
        setter(self, "resolution", resolution)
        setter(self, "range", range)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"a quantity's facts are read-only (setting {name})")

    def _key(self) -> tuple[str, float | None, tuple[float, float] | None]:
        return (self.unit, self.resolution, self.range)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Quantity) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Quantity({self.unit!r}, {self.resolution!r}, {self.range!r})"


def import_object(module: str, attr: str = "") -> object:
    """The object `module:attr` names (`attr` may be dotted, or empty for the module itself), as
    entry points and named factories refer to objects."""
    import importlib

    obj: object = importlib.import_module(module)
    for part in attr.split(".") if attr else ():
        obj = getattr(obj, part)
    return obj


def _number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


class Manifest:
    """A plug-in's manifest; see the module's docstring. Read-only once made."""

    __slots__ = ("_factory", "derived", "kind", "name", "quantities", "readme", "sample")

    name: str
    kind: Kind
    #: quantity -> its unit and chip facts, in the order the driver reports them (drivers only)
    quantities: Mapping[str, Quantity]
    #: file of the sample fragment, relative to the factory module's directory
    sample: str | None
    #: file of the README, relative to the same directory
    readme: str | None
    #: made from a class an entry point names (the old contract), not declared by the plug-in
    derived: bool
    _factory: type[Any] | str  # the class once a named factory has been imported

    def __init__(
        self,
        *,
        name: str,
        kind: Kind,
        factory: type[Any] | str,
        quantities: Mapping[str, Quantity] | None = None,
        sample: str | None = None,
        readme: str | None = None,
        derived: bool = False,
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"manifest name must be a non-empty string, got {name!r}")
        if kind not in KINDS:
            raise ValueError(f"manifest {name}: kind must be one of {KINDS}, got {kind!r}")
        if isinstance(factory, str):
            module, sep, attr = factory.partition(":")
            if not (module and sep and attr):
                raise ValueError(
                    f"manifest {name}: factory {factory!r} must be 'package.module:Class'"
                )
        elif not isinstance(factory, type):
            raise TypeError(f"manifest {name}: factory must be a class or 'module:Class'")
        table = dict(quantities or {})
        if table and kind != "driver":
            raise ValueError(f"manifest {name}: only a driver reports quantities")
        for q, fact in table.items():
            if not isinstance(q, str) or not q or not isinstance(fact, Quantity):
                raise TypeError(f"manifest {name}: quantities must map names to Quantity")
        for what, path in (("sample", sample), ("readme", readme)):
            if path is not None and (not isinstance(path, str) or not path or path[0] == "/"):
                raise ValueError(f"manifest {name}: {what} must be a relative file name")
        setter = object.__setattr__
        setter(self, "name", name)
        setter(self, "kind", kind)
        setter(self, "_factory", factory)
        setter(self, "quantities", MappingProxyType(table))
        setter(self, "sample", sample)
        setter(self, "readme", readme)
        setter(self, "derived", derived)

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"a manifest is read-only (setting {name})")

    def __repr__(self) -> str:
        factory = self._factory if isinstance(self._factory, str) else self._factory.__qualname__
        how = ", derived" if self.derived else ""
        return f"Manifest({self.kind} {self.name!r}, factory {factory}{how})"

    @classmethod
    def of_class(cls, factory: type[Any], *, name: str, kind: Kind) -> Manifest:
        """The manifest of a plug-in whose entry point names its class (the old contract)."""
        return cls(name=name, kind=kind, factory=factory, derived=True)

    @property
    def factory(self) -> type[Any]:
        """The plug-in's class; a named one is imported now, the first time it is asked for."""
        factory = self._factory
        if isinstance(factory, str):
            module, _, attr = factory.partition(":")
            obj = import_object(module, attr)
            if not isinstance(obj, type):
                raise TypeError(f"manifest {self.name}: factory {factory} is not a class")
            object.__setattr__(self, "_factory", obj)
            return obj
        return factory

    @property
    def config(self) -> Mapping[str, Field]:
        """The plug-in's typed options: its factory's `CONFIG` (none when it declares none)."""
        config = getattr(self.factory, "CONFIG", {})
        if not isinstance(config, Mapping) or not all(
            isinstance(k, str) and isinstance(f, Field) for k, f in config.items()
        ):
            raise TypeError("its CONFIG is not a mapping of str to gateway.core.fields.Field")
        return config

    def units(self) -> dict[str, str]:
        """Quantity -> SenML unit, in the order the driver reports them."""
        return {q: fact.unit for q, fact in self.quantities.items()}

    def directory(self) -> Path:
        """The directory of the factory's module, which the sample and README are named from.
        Found without importing a named factory's module."""
        from pathlib import Path

        factory = self._factory
        module = factory.partition(":")[0] if isinstance(factory, str) else factory.__module__
        origin = getattr(sys.modules.get(module), "__file__", None)
        if origin is None:
            import importlib.util

            spec = importlib.util.find_spec(module)
            origin = None if spec is None else spec.origin
        if not origin:
            raise LookupError(f"manifest {self.name}: cannot tell where module {module} lies")
        return Path(origin).parent

    def sample_path(self) -> Path | None:
        return None if self.sample is None else self.directory() / self.sample

    def readme_path(self) -> Path | None:
        return None if self.readme is None else self.directory() / self.readme

    def sample_text(self) -> str:
        """The sample fragment: the plug-in's table as a configuration file shows it."""
        path = self.sample_path()
        if path is None:
            raise LookupError(f"{self.kind} {self.name} ships no sample")
        return path.read_text(encoding="utf-8")
