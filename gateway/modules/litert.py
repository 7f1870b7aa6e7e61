"""The one import shim for the TFLite interpreter.

`ai-edge-litert` (Google's LiteRT, the successor of tflite-runtime) first; `tflite-runtime`
where only it installs (32-bit Raspberry Pi OS, armv7l). Nothing else imports either package.
"""

from __future__ import annotations

import importlib
from typing import Any

from gateway.errors import GatewayError

#: (module, what to `pip install`) in the order tried
_CANDIDATES = (
    ("ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "tflite-runtime"),
)


class RuntimeMissing(GatewayError):
    """No TFLite interpreter is installed."""


def interpreter_class() -> Any:
    """The `Interpreter` class of the first runtime that imports; RuntimeMissing otherwise."""
    tried = []
    for module, package in _CANDIDATES:
        try:
            return importlib.import_module(module).Interpreter
        except ImportError as e:
            tried.append(f"{package} ({e})")
    raise RuntimeMissing(
        "no TFLite runtime: install ai-edge-litert (`pip install ai-edge-litert`), or "
        "tflite-runtime where ai-edge-litert has no wheel (32-bit ARM); tried " + "; ".join(tried)
    )
