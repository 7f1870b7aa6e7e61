"""The one import shim for the TFLite interpreter.

`ai-edge-litert` (Google's LiteRT, the successor of tflite-runtime) first; `tflite-runtime`
where only it installs (32-bit Raspberry Pi OS, armv7l). Nothing else imports either package,
and nothing imports this one's runtime (nor numpy, which comes with it) before a model is
actually loaded: both are the `litert` extra, not dependencies, and a gateway without models
must start, and stay lean, without them (numpy alone is ~11 MB resident).

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
import importlib.util
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from gateway.errors import GatewayError

if TYPE_CHECKING:
    from gateway.config import ModuleConfig

#: (module, what to `pip install`) in the order tried
_CANDIDATES = (
    ("ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "tflite-runtime"),
)
#: what a user installs: the extra brings ai-edge-litert, and numpy with it
INSTALL = "pip install 'depin-gateway[litert]'"
FIX = (
    f"install the litert extra ({INSTALL}), or tflite-runtime where ai-edge-litert has no "
    "wheel (32-bit ARM)"
)


class RuntimeMissing(GatewayError):
    """No TFLite interpreter (or no numpy) is installed: the installation lacks an extra, which
    is the configuration's business (it names a `tflite` module), hence exit code 2."""

    exit_code = 2


def _installed(name: str) -> bool:
    """Whether top-level package `name` is installed, without importing it (a `find_spec` of a
    top-level name only looks at sys.path: no code of the package runs)."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def missing() -> str | None:
    """None when a runtime and numpy are installed; else what is missing and the fix, in one
    line. Cheap: nothing is imported, so `config check` and the daemon's start can ask."""
    if not any(_installed(module.partition(".")[0]) for module, _ in _CANDIDATES):
        return f"no TFLite runtime is installed: {FIX}"
    if not _installed("numpy"):
        return f"numpy is not installed (the TFLite runtime needs it): {FIX}"
    return None


def numpy() -> Any:
    """The numpy module, imported now (a model is being loaded); RuntimeMissing without it."""
    try:
        return importlib.import_module("numpy")
    except ImportError as e:
        raise RuntimeMissing(f"numpy does not import ({e}): {FIX}") from None


def interpreter_class() -> Any:
    """The `Interpreter` class of the first runtime that imports; RuntimeMissing otherwise."""
    tried = []
    for module, package in _CANDIDATES:
        try:
            return importlib.import_module(module).Interpreter
        except ImportError as e:
            tried.append(f"{package} ({e})")
    raise RuntimeMissing(f"no TFLite runtime: {FIX}; tried " + "; ".join(tried))


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


def require_for(modules: Iterable[ModuleConfig]) -> None:
    """RuntimeMissing, naming the module and the extra to install, when one of `modules` is of
    kind `tflite` and no runtime (or no numpy) is installed; checked without importing either,
    before anything starts."""
    for mc in modules:
        if mc.kind == "tflite":
            problem = missing()
            if problem is not None:
                raise RuntimeMissing(f"module {mc.id!r} (kind tflite): {problem}")
            return
