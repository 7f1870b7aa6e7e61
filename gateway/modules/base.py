"""The interface every detection module implements."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

from gateway.core.fields import Field
from gateway.core.reading import Reading

#: one verdict per reading: (score in [0, 1], flags). (0.0, ()) means "no opinion".
Verdict = tuple[float, tuple[str, ...]]
NO_OPINION: Verdict = (0.0, ())


class DetectionModule(ABC):
    #: registry name, referenced as `kind = "..."` in a `[[module]]` table
    name: ClassVar[str]
    version: ClassVar[str]
    #: typed options of the module's `[[module]]` table
    CONFIG: ClassVar[Mapping[str, Field]] = {}
    #: quantities the module judges; None means every quantity. A class attribute for most
    #: modules; a model module sets its own from its manifest.
    quantities: frozenset[str] | None = None
    #: True for a module whose verdicts depend on the chips' resolutions or ranges
    #: (gateway/modules/chips.py): its digest covers them
    USES_CHIP_FACTS: ClassVar[bool] = False

    def __init__(self, *, module_id: str, options: Mapping[str, Any]) -> None:
        self.module_id = module_id
        self.options = dict(options)

    def digest(self) -> bytes:
        """SHA-256 of what decides the verdicts (batch key 8): the module's code by default,
        and with it the chips' facts for a module that judges by them (`USES_CHIP_FACTS`: they
        come from the installed drivers' manifests, not from the module's code); model modules
        return the digest of their model file."""
        import hashlib  # here: loading OpenSSL costs every `status` and start a few ms

        code = Path(inspect.getfile(type(self))).read_bytes()
        if not self.USES_CHIP_FACTS:
            return hashlib.sha256(code).digest()
        from gateway.modules.chips import chip_facts

        return hashlib.sha256(hashlib.sha256(code).digest() + chip_facts().digest()).digest()

    @abstractmethod
    def judge(self, readings: Sequence[Reading]) -> Sequence[Verdict]:
        """One verdict per reading, in order. Readings without a value may be skipped with
        NO_OPINION. Must not keep references to the readings beyond the call."""
