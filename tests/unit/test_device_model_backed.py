"""A model module of a plug-in's own (no TFLite in it) gets the model updates of its model's name,
through `ModelBacked` and the plug-in registry alone: the installed update runs in place of the
configured model, an update on trial runs beside it, and health says which runs where."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Self

import pytest

from gateway.config.settings import ModuleConfig
from gateway.core import plugins
from gateway.core.health import Health
from gateway.core.reading import Reading
from gateway.device.model_service import Chains
from gateway.models.store import Installed, ModelStore
from gateway.modules.base import NO_OPINION, DetectionModule, Verdict
from gateway.modules.model_backed import Model, ModelBacked
from gateway.modules.ranges import RangeModule


class Gust(DetectionModule):
    """A third party's model module: its models are JSON files."""

    name = "gust"
    version = "1.0.0"

    def __init__(self, *, module_id: str, options: Mapping[str, Any]) -> None:
        super().__init__(module_id=module_id, options=options)
        doc = json.loads(Path(options["model"]).read_text())
        self._model = Model(doc["name"], doc["version"], doc["sha256"])
        self.windows: dict[str, list[float]] = {}

    @classmethod
    def configured_model(cls, options: Mapping[str, Any]) -> str:
        return str(json.loads(Path(options["model"]).read_text())["name"])

    @classmethod
    def options_for(cls, options: Mapping[str, Any], manifest: Path) -> dict[str, Any]:
        return {**options, "model": str(manifest)}

    def model(self) -> Model:
        return self._model

    def with_manifest(self, manifest: Path, *, module_id: str | None = None) -> Self:
        options = self.options_for(self.options, manifest)
        return type(self)(module_id=module_id or self.module_id, options=options)

    def take_windows(self, other: ModelBacked, *, copy: bool) -> None:
        if isinstance(other, Gust):
            self.windows = dict(other.windows) if copy else other.windows

    def judge(self, readings: Sequence[Reading]) -> Sequence[Verdict]:
        return [NO_OPINION] * len(readings)


def _model(folder: Path, version: str) -> Installed:
    folder.mkdir(parents=True, exist_ok=True)
    sha = hashlib.sha256(version.encode()).hexdigest()
    path = folder / "wind.json"
    path.write_text(json.dumps({"name": "wind", "version": version, "sha256": sha}))
    mode = "shadow" if folder.name == "shadow" else "active"
    return Installed("wind", version, sha, 1, "did:key:z", mode, path)


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> None:
    kinds = {"gust": Gust, "ranges": RangeModule}
    monkeypatch.setattr(plugins, "module_class", kinds.__getitem__)


def _chains(tmp_path: Path, *installed: Installed) -> tuple[Chains, Health]:
    store = ModelStore(tmp_path / "models", ["did:key:z"])
    for inst in installed:
        store.installed[inst.mode][inst.name] = inst
    health = Health()
    return Chains(store, health=health), health


def _configs(tmp_path: Path) -> list[ModuleConfig]:
    configured = _model(tmp_path / "configured", "1").manifest
    return [
        ModuleConfig(id="physics", kind="ranges", options={}),
        ModuleConfig(id="wind-model", kind="gust", options={"model": str(configured), "gain": 2}),
    ]


def test_the_installed_update_runs_in_place_of_the_configured_model(
    tmp_path: Path, registry: None
) -> None:
    update = _model(tmp_path / "models" / "active", "2")
    chains, health = _chains(tmp_path, update)
    chain = chains.build(_configs(tmp_path))
    chains.adopt(chain)
    physics, wind = chain.modules
    assert isinstance(wind, Gust) and wind.model().version == "2"
    assert wind.options["gain"] == 2  # its other options as configured
    assert isinstance(physics, RangeModule)  # a module without models is left as it is
    assert health.models == {
        "wind": {
            "version": "2",
            "sha256": update.sha256,
            "source": "update",
            "modules": ["wind-model"],
        }
    }


def test_a_model_on_trial_runs_beside_the_module_of_its_name(
    tmp_path: Path, registry: None
) -> None:
    trial = _model(tmp_path / "models" / "shadow", "3")
    chains, health = _chains(tmp_path, trial)
    chain = chains.build(_configs(tmp_path))
    chains.adopt(chain)
    (_, wind) = chain.modules
    shadow = chain.shadows["wind"]
    assert isinstance(shadow, Gust) and shadow.module_id == "shadow:wind"
    assert shadow.model().version == "3" and shadow.options["gain"] == 2  # judged alike
    assert isinstance(wind, Gust) and wind.model().version == "1"  # the active one unchanged
    assert health.models["wind"]["source"] == "config"
    assert health.shadow["wind"]["version"] == "3"
