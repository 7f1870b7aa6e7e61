"""The one import shim for the TFLite interpreter.

`ai-edge-litert` (Google's LiteRT, the successor of tflite-runtime) first; `tflite-runtime`
where only it installs (32-bit Raspberry Pi OS, armv7l). Nothing else imports either package,
and nothing imports this one's runtime (nor numpy, which comes with it) before a model is
actually loaded: both are the `litert` extra, not dependencies, and a gateway without models
must start, and stay lean, without them (numpy alone adds 10-15 MB resident).

`new_interpreter` builds every interpreter the gateway runs. It asks for the built-in kernels
without the default delegates: for a model this small (one window of 24 floats, a few dense
layers) the XNNPACK delegate that the runtimes otherwise create and apply on their own saves
~1.8 us per invoke (4 against 5.8 us per judged reading here) but keeps ~0.7 MB resident (its
code and packed weights), on a device with a 64 MB budget for the whole gateway
(bench/gateway_rss.py) and a CPU budget of 50 us per reading that is far from used. The
outputs agree with the delegate's to float32 rounding (~1e-5; a year of hourly TMY data, clean
and with faults injected, gets the same flags).

Loading costs more memory than running. numpy and the runtime are shared libraries (~70 MB of
files here, with OpenBLAS, libgfortran and libstdc++) whose start-up code (numpy's type and
ufunc tables, the runtime's ~600 static initialisers and its op registry) reads pages all over
them, and the kernel maps the neighbours of each page read too (fault-around): ~17.5 MB of
their pages became resident in a gateway (bench/gateway_rss.py), of which running the model
uses ~5 MB. So each loader below ends by giving back what its step left resident
(`release_pages`): the pages of the read-only mappings of the files that numpy's and the
runtime's imports mapped are unmapped with MADV_DONTNEED. They stay in the page cache, and a
page used again comes back at its next use (a minor fault), byte for byte what it was: what
the kernel itself does to such pages when it needs the memory, done when we know they are
idle. Giving them back after each step (numpy, the runtime, the interpreter), not once at the
end, also keeps the peak while loading low: the start-up pages of all three are never resident
at once.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, NamedTuple

from gateway.core.errors import RuntimeMissing

if TYPE_CHECKING:
    from gateway.config.settings import ModuleConfig

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


def _one_blas_thread() -> None:
    """Ask numpy's BLAS for one thread, before numpy is first imported (OpenBLAS reads these
    once, when it is loaded). By default it starts a worker thread per core, three on a Pi,
    that would only ever wait: the gateway asks numpy for no matrix product (the model runs in
    the TFLite runtime; numpy only carries its inputs and outputs), and one thread is right for
    a model this small. Each costs a stack and a task (TasksMax in the unit); on a 2-core test
    machine (one worker) the resident set did not change measurably. Here, not only in the
    systemd unit, so a gateway started by hand gets it too; `setdefault`, so an owner's own
    setting wins. OMP_NUM_THREADS is what an OpenMP build of OpenBLAS reads (Debian's numpy,
    which tflite-runtime uses on 32-bit Pi OS)."""
    if "numpy" not in sys.modules:
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        os.environ.setdefault("OMP_NUM_THREADS", "1")


def numpy() -> Any:
    """The numpy module, imported now (a model is being loaded); RuntimeMissing without it."""
    _one_blas_thread()
    try:
        with _loading("numpy"):
            return importlib.import_module("numpy")
    except ImportError as e:
        raise RuntimeMissing(f"numpy does not import ({e}): {FIX}") from None


def interpreter_class() -> Any:
    """The `Interpreter` class of the first runtime that imports; RuntimeMissing otherwise."""
    _one_blas_thread()  # the runtime imports numpy itself
    tried = []
    for module, package in _CANDIDATES:
        try:
            with _loading(module):
                return importlib.import_module(module).Interpreter
        except ImportError as e:
            tried.append(f"{package} ({e})")
    raise RuntimeMissing(f"no TFLite runtime: {FIX}; tried " + "; ".join(tried))


def new_interpreter(model_content: bytes, *, num_threads: int = 1) -> Any:
    """An interpreter for the model, without the default delegates where the runtime lets us
    say so (`experimental_op_resolver_type`: ai-edge-litert, tflite-runtime >= 2.6); older
    tflite-runtime wheels get their defaults. The caller calls `release_pages` once it has
    allocated the tensors: building and allocating read set-up code the invokes never run."""
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


# --- giving back the library pages only loading needed (see the module's docstring) ---------

#: madvise(2): unmap the pages; a private file mapping's come back from the page cache (or the
#: file) at their next use, as they were
_MADV_DONTNEED = 4
#: the files numpy's and the runtime's imports mapped: their shared libraries (and the standard
#: library's extension modules they import)
_loaded_files: set[str] = set()


class _Mapping(NamedTuple):
    start: int
    end: int
    perms: str
    path: str
    rss_kb: int
    anonymous_kb: int


def _mapped_files() -> set[str]:
    """The paths of what this process maps, from /proc/self/maps (a line a mapping: cheaper
    than smaps); none where it cannot be read."""
    try:
        with open("/proc/self/maps") as f:
            return {p[5].rstrip("\n") for p in (line.split(maxsplit=5) for line in f) if len(p) > 5}
    except OSError:
        return set()


def _mappings() -> list[_Mapping]:
    """This process's mappings, from /proc/self/smaps; none where it cannot be read."""
    out: list[_Mapping] = []
    head: list[str] = []
    rss = 0
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                key, _, value = line.partition(" ")
                if not key.endswith(":"):
                    # a mapping's first line: range perms offset device inode [path]
                    head = line.split(maxsplit=5)
                elif key == "Rss:":
                    rss = int(value.split()[0])
                elif key == "Anonymous:" and len(head) >= 5:
                    start, _, end = head[0].partition("-")
                    path = head[5].rstrip("\n") if len(head) > 5 else ""
                    anonymous = int(value.split()[0])
                    out.append(
                        _Mapping(int(start, 16), int(end, 16), head[1], path, rss, anonymous)
                    )
    except (OSError, ValueError):
        return []
    return out


@contextlib.contextmanager
def _loading(module: str) -> Iterator[None]:
    """Around the import of `module`, unless it was imported before: note the files the import
    maps (the shared libraries it loads), then give back the pages their loading left
    resident."""
    if module in sys.modules:
        yield
        return
    before = _mapped_files()
    try:
        yield
    finally:
        _loaded_files.update(p for p in _mapped_files() - before if os.path.isfile(p))
        release_pages()


def release_pages() -> int:
    """Unmap the resident pages of the read-only mappings of the files numpy's and the
    runtime's imports mapped (their code and constants); returns the bytes given back. A
    mapping with anonymous pages (copied on write: relocated data) is left alone, as those
    copies are not in the file; writable ones too. Nothing happens where /proc/self/smaps or
    madvise is missing or refuses: pages left resident cost memory, nothing else."""
    if not _loaded_files:
        return 0
    import ctypes  # not at the top: every daemon imports this module, with a model or not

    try:
        madvise = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return 0
    madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    released = 0
    for m in _mappings():
        if (
            m.path in _loaded_files
            and "w" not in m.perms
            and m.anonymous_kb == 0
            and m.rss_kb
            and madvise(m.start, m.end - m.start, _MADV_DONTNEED) == 0
        ):
            released += m.rss_kb * 1024
    return released
