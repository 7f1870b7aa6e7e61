"""Model module `tflite`: a float32 TFLite model scores a window of one quantity's readings.

Each model is a file `NAME.tflite` with its manifest `NAME.json` beside it (written by
`models/train.py`): name, version, inputs (quantities, window, unit, interval), normalisation,
threshold, sha256 of the model file and what the output means. The manifest is checked before
the model is loaded; any mismatch (missing file, sha256, window, shape, threshold ...) refuses
the model with a `ModelError` that names the file, the check that failed and the fix.

Normalisation and the error computation are inside the graph: the module only keeps a ring of
the last `window` values per series (`sensor/quantity`), and once it is full runs one invoke per
reading and reads one scalar, the model's error. Score = error / (threshold x threshold_scale),
clipped to [0, 1]; the flag `model` at >= 1. Until the ring is full: no opinion. A non-finite
value, or a gap longer than 2.5 x the manifest's interval, restarts the series' ring.

Where models are found: `model` is a name looked up as `<models_dir>/<name>.json`, or a path to
a manifest (`.json`) or a model (`.tflite`, its manifest beside it). Without `models_dir`, the
`models/` folder of the source tree this package runs from (an editable / source install) is
used, and in an installed wheel the copy under `<prefix>/share/depin-gateway/models`; relative
`models_dir` paths are taken from the config file's directory.

numpy and the TFLite runtime (the `litert` extra) are imported when a model is loaded, never
when this module is: the manifest checks, `config check` and the model updates' bookkeeping run
without them, and a gateway without models never loads them.
"""

from __future__ import annotations

import copy as copy_module
import hashlib
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self

from gateway.core.errors import ModelError
from gateway.core.fields import Field
from gateway.core.manifest import Manifest as PluginManifest
from gateway.core.reading import Reading
from gateway.modules import litert
from gateway.modules.base import NO_OPINION, DetectionModule, Verdict
from gateway.modules.litert import new_interpreter
from gateway.modules.model_backed import Model, ModelBacked
from gateway.modules.series import module_options

if TYPE_CHECKING:
    import numpy as np

DEFAULT_MODEL = "temperature-ae"


def _default_models_dir() -> Path:
    """`models/` of the source tree (a checkout or an editable install), else the copy an
    installed wheel puts under `<prefix>/share/depin-gateway/models` (pyproject data-files)."""
    source = Path(__file__).resolve().parents[2] / "models"
    if (source / f"{DEFAULT_MODEL}.json").is_file():
        return source
    return Path(sys.prefix) / "share" / "depin-gateway" / "models"


DEFAULT_MODELS_DIR = _default_models_dir()
FLAG = "model"


@dataclass(frozen=True)
class Manifest:
    path: Path  # the .json
    model_path: Path  # the .tflite
    name: str
    version: str
    sha256: str
    quantities: tuple[str, ...]
    window: int
    threshold: float
    interval: float | None  # seconds between readings the model was trained on


def manifest_path(model: str, models_dir: Path | None) -> Path:
    """The manifest of option `model`: a name in the models directory, or a file path."""
    p = Path(model)
    if p.suffix in (".json", ".tflite") or len(p.parts) > 1:
        if not p.is_absolute():
            p = (models_dir or Path.cwd()) / p
        return p.with_suffix(".json")
    return (models_dir or DEFAULT_MODELS_DIR) / f"{model}.json"


def _get(doc: Mapping[str, Any], path: Path, *keys: str) -> Any:
    cur: Any = doc
    for k in keys:
        if not isinstance(cur, dict) or k not in cur:
            raise ModelError(
                path,
                f"manifest has no {'.'.join(keys)!r}",
                "regenerate it with models/train.py (it writes model and manifest together)",
            )
        cur = cur[k]
    return cur


def read_manifest(path: Path) -> tuple[Manifest, bytes]:
    """Every check that needs no interpreter; returns the manifest and the model's bytes (the
    ones that were hashed, so what is loaded is what was checked)."""
    if not path.is_file():
        raise ModelError(
            path,
            "manifest not found",
            "check the module's `model` / `models_dir` options; every .tflite needs its .json",
        )
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(
            path, f"manifest unreadable ({e})", "restore it from the model bundle"
        ) from e
    if not isinstance(doc, dict):
        raise ModelError(path, "manifest is not a JSON object", "restore it from the model bundle")
    fmt = doc.get("format", "tflite")
    if fmt != "tflite":
        raise ModelError(path, f"format {fmt!r} is not 'tflite'", "use a TFLite model here")
    model_path = path.with_name(str(doc.get("file") or path.with_suffix(".tflite").name))
    want = str(_get(doc, path, "sha256")).lower()
    if len(want) != 64 or any(c not in "0123456789abcdef" for c in want):
        raise ModelError(path, "sha256 is not 64 hex digits", "regenerate it with models/train.py")
    window = _get(doc, path, "inputs", "window")
    if not isinstance(window, int) or isinstance(window, bool) or window < 2:
        raise ModelError(path, f"inputs.window {window!r} is not an integer >= 2", "fix it")
    shape = doc["inputs"].get("shape", [1, window])
    if list(shape) != [1, window]:
        raise ModelError(
            path,
            f"wrong window: inputs.shape {shape} does not match inputs.window {window}",
            "the manifest does not describe this model; regenerate it with models/train.py",
        )
    quantities = _get(doc, path, "inputs", "quantities")
    if (
        not isinstance(quantities, list)
        or len(quantities) != 1
        or not all(isinstance(q, str) and q for q in quantities)
    ):
        raise ModelError(
            path, f"inputs.quantities {quantities!r} is not one quantity name", "fix it"
        )
    threshold = _get(doc, path, "threshold")
    if (
        not isinstance(threshold, int | float)
        or isinstance(threshold, bool)
        or not math.isfinite(threshold)
        or threshold <= 0
    ):
        raise ModelError(path, f"threshold {threshold!r} is not a positive number", "fix it")
    interval = doc["inputs"].get("interval")
    if not model_path.is_file():
        raise ModelError(
            model_path, "model file not found", f"put it beside its manifest {path.name}"
        )
    data = model_path.read_bytes()
    got = hashlib.sha256(data).hexdigest()
    if got != want:
        raise ModelError(
            model_path,
            f"sha256 mismatch: the file has {got}, manifest {path.name} says {want}",
            "the model or its manifest was changed or truncated; reinstall both from one "
            "bundle (or regenerate them with models/train.py)",
        )
    return (
        Manifest(
            path=path,
            model_path=model_path,
            name=str(doc.get("name", path.stem)),
            version=str(doc.get("version", "")),
            sha256=want,
            quantities=tuple(quantities),
            window=window,
            threshold=float(threshold),
            interval=float(interval) if isinstance(interval, int | float) else None,
        ),
        data,
    )


class _Ring:
    """The last `window` values, contiguous: each value is written twice (at i and i + w), so
    buf[pos : pos + w] is always the window, oldest first."""

    __slots__ = ("buf", "count", "last_t", "pos")

    def __init__(self, buf: np.ndarray) -> None:
        self.buf = buf  # zeros, shape (1, 2 * window), float32
        self.pos = 0
        self.count = 0
        self.last_t = -math.inf


class TFLiteModule(DetectionModule):
    """Scores each reading of its model's quantity by the model's error over the last window.
    Model updates reach it through `ModelBacked`."""

    name = "tflite"
    version = "1.0.0"
    CONFIG: ClassVar[Mapping[str, Field]] = {
        "model": Field(
            "str",
            "model name (looked up as <models_dir>/<name>.json) or a path to its .json/.tflite",
            default=DEFAULT_MODEL,
        ),
        "models_dir": Field(
            "path",
            "directory of the model files; default: the models/ folder of the source tree",
            default=None,
        ),
        "threshold_scale": Field(
            "float",
            "multiplies the manifest's threshold (above 1: fewer, surer alarms)",
            default=1.0,
            min=0.01,
        ),
    }

    @classmethod
    def check_config(cls, options: Mapping[str, Any]) -> list[str]:
        """Config-time check of the manifest and the model file's sha256 (no interpreter)."""
        o = module_options(cls, options)
        try:
            read_manifest(manifest_path(str(o["model"]), _dir(o["models_dir"])))
        except ModelError as e:
            return [f"model: {e.problems[0]}"]
        return []

    def __init__(self, *, module_id: str, options: Mapping[str, Any]) -> None:
        super().__init__(module_id=module_id, options=options)
        o = module_options(type(self), options)
        self.manifest, data = read_manifest(manifest_path(str(o["model"]), _dir(o["models_dir"])))
        m = self.manifest
        self._np = np = litert.numpy()
        try:
            interp = new_interpreter(data, num_threads=1)
            interp.allocate_tensors()
        finally:
            # building and allocating ran the runtime's set-up code, which the invokes never
            # run again: give its pages back (gateway/modules/litert.py says why and how)
            litert.release_pages()
        ins, outs = interp.get_input_details(), interp.get_output_details()
        if len(ins) != 1 or list(ins[0]["shape"]) != [1, m.window]:
            got = [list(d["shape"]) for d in ins]
            raise ModelError(
                m.model_path,
                f"wrong window: the model's input is {got}, manifest {m.path.name} says "
                f"[1, {m.window}]",
                "the manifest does not describe this model; regenerate both with models/train.py",
            )
        if ins[0]["dtype"] is not np.float32 or len(outs) != 1 or int(outs[0]["shape"].prod()) != 1:
            raise ModelError(
                m.model_path,
                "the model is not float32 in, one scalar out",
                "use a model written by models/train.py",
            )
        self._interp = interp
        self._in = int(ins[0]["index"])
        self._out = int(outs[0]["index"])
        self.quantity = m.quantities[0]
        self.quantities = frozenset(m.quantities)  # the chain hands it only these readings
        self.window = m.window
        self.limit = m.threshold * float(o["threshold_scale"])
        self.max_gap = 2.5 * m.interval if m.interval else math.inf
        self.state: dict[str, _Ring] = {}

    def digest(self) -> bytes:
        return bytes.fromhex(self.manifest.sha256)

    # --- ModelBacked: how model updates reach this module ---------------------------------------

    @classmethod
    def configured_model(cls, options: Mapping[str, Any]) -> str:
        """The manifest's name, read without the checks (a broken configured model must not
        keep its installed update from running); the file's stem when it has none."""
        o = module_options(cls, options)
        model = str(o["model"])
        path = manifest_path(model, _dir(o["models_dir"]))
        try:
            name = json.loads(path.read_text(encoding="utf-8")).get("name")
        except (OSError, ValueError, AttributeError):
            name = None
        return str(name) if isinstance(name, str) and name else Path(model).stem

    @classmethod
    def options_for(cls, options: Mapping[str, Any], manifest: Path) -> dict[str, Any]:
        return {**options, "model": str(manifest), "models_dir": None}

    def model(self) -> Model:
        m = self.manifest
        return Model(m.name, m.version, m.sha256)

    def with_manifest(self, manifest: Path, *, module_id: str | None = None) -> Self:
        return type(self)(
            module_id=self.module_id if module_id is None else module_id,
            options=self.options_for(self.options, manifest),
        )

    def take_windows(self, other: ModelBacked, *, copy: bool) -> None:
        if not isinstance(other, TFLiteModule):
            return
        if (self.window, self.quantity) == (other.window, other.quantity):
            self.state = copy_module.deepcopy(other.state) if copy else other.state

    def error(self, window: np.ndarray) -> float:
        """The model's raw output for one window (shape (window,) or (1, window))."""
        np = self._np
        self._interp.set_tensor(self._in, np.asarray(window, dtype=np.float32).reshape(1, -1))
        self._interp.invoke()
        return float(self._interp.get_tensor(self._out).reshape(-1)[0])

    def judge(self, readings: Sequence[Reading]) -> Sequence[Verdict]:
        return [self._one(r) for r in readings]

    def _one(self, r: Reading) -> Verdict:
        v = r.value
        if r.quantity != self.quantity or v is None:
            return NO_OPINION
        key = r.name
        st = self.state.get(key)
        if st is None:
            st = self.state[key] = _Ring(self._np.zeros((1, 2 * self.window), self._np.float32))
        if not math.isfinite(v) or r.t - st.last_t > self.max_gap:
            st.count = 0  # a hole in the series: start the window afresh
        st.last_t = r.t
        if not math.isfinite(v):
            return NO_OPINION
        w = self.window
        buf = st.buf[0]
        i = st.pos
        buf[i] = buf[i + w] = v
        st.pos = i = (i + 1) % w
        st.count += 1
        if st.count < w:
            return NO_OPINION
        interp = self._interp
        interp.set_tensor(self._in, st.buf[:, i : i + w])
        interp.invoke()
        score = float(interp.get_tensor(self._out).flat[0]) / self.limit
        if not math.isfinite(score):
            return NO_OPINION  # e.g. a model that normalises a flat window by its spread
        if score >= 1.0:
            return (1.0, (FLAG,))
        return (max(score, 0.0), ())


def _dir(value: Any) -> Path | None:
    return None if value is None else Path(value)


# The plug-in's manifest (what its entry point names), not a model's `Manifest` above.
MANIFEST = PluginManifest(
    name="tflite",
    kind="module",
    factory=TFLiteModule,
    sample="tflite.sample.toml",
    readme="../../docs/modules/tflite.md",
)


if TYPE_CHECKING:
    _model_backed: type[ModelBacked] = TFLiteModule
