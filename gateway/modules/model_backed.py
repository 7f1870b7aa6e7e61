"""What a detection module whose verdicts come from a model file offers the gateway.

A model module (the built-in `tflite`, or a plug-in's) implements these methods, and the gateway
then runs the model updates of its name (gateway.models.store): the update's model in its place,
an update on trial beside it (shadow mode), and the module's models in the health message. The
gateway knows such modules through this protocol and the plug-in registry alone; a module
without these methods is never touched by a model update.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, Self, cast, runtime_checkable

from gateway.modules.base import DetectionModule


@dataclass(frozen=True)
class Model:
    """The model a module runs, as health reports it and the updates name it."""

    name: str
    version: str
    sha256: str  # hex, of the model file


@runtime_checkable
class ModelBacked(Protocol):
    """Methods only, so that `issubclass` works on a registered class before any model is
    loaded (the registry hands out classes)."""

    @classmethod
    def configured_model(cls, options: Mapping[str, Any]) -> str:
        """The name of the model a `[[module]]` table with these options runs, found without
        loading the model (an installed update of that name runs in its place)."""
        ...

    @classmethod
    def options_for(cls, options: Mapping[str, Any], manifest: Path) -> dict[str, Any]:
        """`options` changed to run the model described by `manifest` (an installed update)."""
        ...

    def model(self) -> Model:
        """The model this module runs."""
        ...

    def with_manifest(self, manifest: Path, *, module_id: str | None = None) -> Self:
        """The same module (kind and options) running the model of `manifest`: a new module,
        under `module_id` if given. It loads the model: blocking, call it from a thread."""
        ...

    def take_windows(self, other: ModelBacked, *, copy: bool) -> None:
        """Go on from the windows `other` has filled, when they hold the same series in the
        same length, so that a new model judges from the next reading on (no warm-up). With
        `copy` the two keep their own windows (a shadow beside the active model); without,
        `other` is being replaced and its windows are handed over."""
        ...


if TYPE_CHECKING:

    class ModelModule(DetectionModule, ModelBacked):
        """A detection module that implements ModelBacked (a name for typing only: modules
        implement the protocol without naming it)."""


def model_backed(module: DetectionModule) -> ModelModule | None:
    """`module`, when it implements ModelBacked."""
    return cast("ModelModule", module) if isinstance(module, ModelBacked) else None


def model_class(klass: object) -> type[ModelModule] | None:
    """A registered module class (`plugins.module_class`), when its modules implement
    ModelBacked."""
    if isinstance(klass, type) and issubclass(klass, ModelBacked):
        return cast("type[ModelModule]", klass)
    return None
