"""The one import shim for the TFLite interpreter.

`ai-edge-litert` (Google's LiteRT, the successor of tflite-runtime) first; `tflite-runtime`
where only it installs (32-bit Raspberry Pi OS, armv7l). Nothing else imports either package.

`new_interpreter` builds every interpreter the gateway runs. It asks for the built-in kernels
without the default delegates: for a model this small (one window of 24 floats, a few dense
layers) the XNNPACK delegate that the runtimes otherwise create and apply on their own saves
~1.8 us per invoke (4 against 5.8 us per judged reading here) but keeps ~0.7 MB resident (its
code and packed weights), on a device with an 80 MB budget for the whole gateway
(bench/gateway_rss.py) and a CPU budget of 50 us per reading that is far from used. The
outputs agree with the delegate's to float32 rounding (~1e-5; a year of hourly TMY data, clean
and with faults injected, gets the same flags).
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


def new_interpreter(model_content: bytes, *, num_threads: int = 1) -> Any:
    """An interpreter for the model, without the default delegates where the runtime lets us
    say so (`experimental_op_resolver_type`: ai-edge-litert, tflite-runtime >= 2.6); older
    tflite-runtime wheels get their defaults."""
    cls = interpreter_class()
    kwargs: dict[str, Any] = {}
    resolver = getattr(importlib.import_module(cls.__module__), "OpResolverType", None)
    plain = getattr(resolver, "BUILTIN_WITHOUT_DEFAULT_DELEGATES", None)
    if plain is not None:
        kwargs["experimental_op_resolver_type"] = plain
    return cls(model_content=model_content, num_threads=num_threads, **kwargs)
