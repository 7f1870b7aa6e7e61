"""The `tflite` model module: the shipped model in the real interpreter, its manifest checks,
and its verdicts on real hourly temperature with a fault injected."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from gateway.config import settings as config
from gateway.core import plugins
from gateway.core.errors import ConfigError, GatewayError
from gateway.core.health import Health
from gateway.core.reading import Reading
from gateway.modules import litert, tflite
from gateway.modules.chain import ModuleChain

pytest.importorskip("ai_edge_litert.interpreter")

MODELS = Path(__file__).resolve().parents[2] / "models"
VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "tflite"
TMY = MODELS / "data" / "weather" / "723170TYA.CSV"
HOUR = 3600.0
HEADER = """\
[device]
name = "tflite-test"
key_file = "device.key"

[[sensor]]
id = "climate"
driver = "simulated"
kind = "climate"
"""


def _temperature() -> list[float]:
    with TMY.open(newline="") as f:
        rows = list(csv.reader(f))
    col = rows[1].index("Dry-bulb (C)")
    return [float(r[col]) for r in rows[2:]]


def _copy_model(tmp_path: Path) -> Path:
    for suffix in (".tflite", ".json"):
        shutil.copy(MODELS / f"temperature-ae{suffix}", tmp_path / f"temperature-ae{suffix}")
    return tmp_path / "temperature-ae.json"


def _edit(path: Path, **changes: object) -> None:
    doc = json.loads(path.read_text())
    for dotted, value in changes.items():
        cur = doc
        *head, last = dotted.split("__")
        for k in head:
            cur = cur[k]
        cur[last] = value
    path.write_text(json.dumps(doc))


def _module(**options: object) -> tflite.TFLiteModule:
    return tflite.TFLiteModule(module_id="m", options=options)


# --------------------------------------------------------------------------- shipped model


def test_shipped_model_loads_and_matches_its_manifest() -> None:
    manifest = json.loads((MODELS / "temperature-ae.json").read_text())
    data = (MODELS / "temperature-ae.tflite").read_bytes()
    assert hashlib.sha256(data).hexdigest() == manifest["sha256"]
    interp = litert.interpreter_class()(model_content=data)
    interp.allocate_tensors()
    (inp,) = interp.get_input_details()
    assert list(inp["shape"]) == [1, manifest["inputs"]["window"]]
    assert inp["dtype"] is np.float32
    mod = _module()
    assert mod.digest() == bytes.fromhex(manifest["sha256"])
    assert mod.quantity == "temperature" and mod.window == 24


def test_shipped_model_reproduces_stored_outputs() -> None:
    doc = json.loads((VECTORS / "temperature-ae.json").read_text())
    mod = _module(model=doc["model"])
    assert mod.manifest.sha256 == doc["sha256"], "vectors are for another model: regenerate"
    for case in doc["cases"]:
        got = mod.error(np.array(case["window"], dtype=np.float32))
        assert got == pytest.approx(case["error"], rel=doc["tolerance"], abs=1e-6), case["what"]
    # the stored spike window is over the threshold, the clean ones well under it
    errors = {c["what"]: c["error"] for c in doc["cases"]}
    assert max(e for w, e in errors.items() if "," not in w) < 0.5 * mod.limit
    assert next(e for w, e in errors.items() if "spike" in w) >= mod.limit


# --------------------------------------------------------------------------- manifest checks


def test_wrong_sha256_is_refused_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _copy_model(tmp_path)
    _edit(path, sha256="0" * 64)
    loaded: list[object] = []
    monkeypatch.setattr(tflite, "new_interpreter", lambda *a, **kw: loaded.append(1))
    with pytest.raises(tflite.ModelError) as e:
        _module(model="temperature-ae", models_dir=tmp_path)
    assert isinstance(e.value, ConfigError)
    assert "sha256 mismatch" in str(e.value) and "temperature-ae.tflite" in str(e.value)
    assert not loaded  # nothing was handed to the interpreter


def test_model_file_changed_is_refused(tmp_path: Path) -> None:
    path = _copy_model(tmp_path)
    model = path.with_suffix(".tflite")
    model.write_bytes(model.read_bytes()[:-1] + b"\0")
    with pytest.raises(tflite.ModelError, match="sha256 mismatch"):
        _module(model=str(path))


def test_wrong_window_is_refused(tmp_path: Path) -> None:
    path = _copy_model(tmp_path)
    _edit(path, inputs__window=48)
    with pytest.raises(tflite.ModelError, match="wrong window") as e:
        _module(model="temperature-ae", models_dir=tmp_path)
    assert str(path) in str(e.value)
    # the manifest's own shape agreeing with a wrong window: the model's input shape decides
    _edit(path, inputs__shape=[1, 48])
    with pytest.raises(tflite.ModelError, match="wrong window: the model's input is"):
        _module(model="temperature-ae", models_dir=tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("no-manifest", "manifest not found"),
        ("no-model", "model file not found"),
        ("threshold", "threshold"),
        ("garbage", "manifest unreadable"),
    ],
)
def test_other_manifest_problems_are_refused(tmp_path: Path, change: str, message: str) -> None:
    path = _copy_model(tmp_path)
    if change == "no-manifest":
        path.unlink()
    elif change == "no-model":
        path.with_suffix(".tflite").unlink()
    elif change == "threshold":
        _edit(path, threshold=-1)
    else:
        path.write_text("{not json")
    with pytest.raises(tflite.ModelError, match=message):
        _module(model="temperature-ae", models_dir=tmp_path)


def test_runtime_missing_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(name: str) -> object:
        raise ImportError(f"no module named {name}")

    monkeypatch.setattr(litert.importlib, "import_module", fail)
    with pytest.raises(GatewayError, match=r"pip install 'depin-gateway\[litert\]'"):
        litert.interpreter_class()


def test_interpreter_runs_without_default_delegates() -> None:
    def ops(interp: object) -> list[str]:
        return [op["op_name"] for op in interp._get_ops_details()]  # type: ignore[attr-defined]

    data = (MODELS / "temperature-ae.tflite").read_bytes()
    default = litert.interpreter_class()(model_content=data)
    default.allocate_tensors()
    assert "DELEGATE" in ops(default)  # the runtime's default: XNNPACK takes over the graph
    mod = _module()
    assert "DELEGATE" not in ops(mod._interp)  # built-in kernels only: ~0.7 MB less resident


def test_runtime_without_resolver_choice_gets_its_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # old tflite-runtime wheels have no OpResolverType: the interpreter is built as before
    calls: list[dict[str, object]] = []

    class Interpreter:
        def __init__(self, **kwargs: object) -> None:
            calls.append(kwargs)

    monkeypatch.setattr(litert, "interpreter_class", lambda: Interpreter)
    litert.new_interpreter(b"model", num_threads=1)
    assert calls == [{"model_content": b"model", "num_threads": 1}]


# --------------------------------------------------------------------------- verdicts


def test_flags_injected_spike_and_stays_quiet_on_clean_data() -> None:
    series = _temperature()
    mod = _module()
    start = 5000  # in the evaluation part (after the clean 40 % used for training)
    clean = [
        mod.judge([Reading("s", "temperature", "Cel", v, i * HOUR, True)])[0]
        for i, v in enumerate(series[start - 200 : start + 200])
    ]
    assert all(v == (0.0, ()) for v in clean[:23])  # no opinion until the window is full
    assert not any(flags for _, flags in clean)
    assert all(0.0 <= s <= 1.0 for s, _ in clean)

    sigma = float(np.std(np.diff(series[:3504])))
    faulty = list(series)
    faulty[start] += 8 * sigma  # spike
    for k in range(120):  # a fast drift, as a failing sensor's: +12 sigma over 5 days
        faulty[start + 400 + k] += 12 * sigma * min(k, 60) / 60
    mod = _module()
    flagged = [
        i
        for i, v in enumerate(faulty[start - 200 : start + 600], start - 200)
        if "model" in mod.judge([Reading("s", "temperature", "Cel", v, i * HOUR, True)])[0][1]
    ]
    assert any(start <= i < start + 6 for i in flagged), flagged
    assert all(start <= i < start + 24 or start + 400 <= i < start + 544 for i in flagged)


def test_other_quantities_and_gaps() -> None:
    mod = _module()
    assert mod.judge([Reading("s", "humidity", "%RH", 50.0, 0.0, True)]) == [(0.0, ())]
    for i in range(30):
        mod.judge([Reading("s", "temperature", "Cel", 10.0 + 0.1 * i, i * HOUR, True)])
    assert mod.state["s/temperature"].count == 30
    mod.judge([Reading("s", "temperature", "Cel", 13.0, 40 * HOUR, True)])  # 10 h gap
    assert mod.state["s/temperature"].count == 1


# --------------------------------------------------------------------------- wiring


def test_entry_point_and_config(tmp_path: Path) -> None:
    assert plugins.module_class("tflite") is tflite.TFLiteModule
    cfg = config.loads(
        HEADER + '\n[[module]]\nid = "temp-model"\nkind = "tflite"\nmodel = "temperature-ae"\n'
        f'models_dir = "{MODELS}"\nthreshold_scale = 1.2\n',
        base_dir=tmp_path,
    )
    (mc,) = cfg.modules
    assert mc.kind == "tflite" and mc.options["threshold_scale"] == 1.2
    chain = ModuleChain.from_config(cfg.modules, health=Health())
    ((name, version, digest),) = chain.batch_entries()
    assert (name, version) == ("tflite", "1.0.0")
    assert digest.hex() == json.loads((MODELS / "temperature-ae.json").read_text())["sha256"]

    # a bad manifest is a config problem naming the option and the file
    path = _copy_model(tmp_path)
    _edit(path, sha256="1" * 64)
    with pytest.raises(ConfigError, match=r"module\[0\]\.model.*sha256 mismatch"):
        config.loads(
            HEADER + f'\n[[module]]\nid = "m"\nkind = "tflite"\nmodels_dir = "{tmp_path}"\n',
            base_dir=tmp_path,
        )
