"""Run by scripts/arm64-smoke (tests/arm64.py) inside the emulated arm64 root, with the venv the
wheel was installed into: the shipped model, from the wheel's own copy, loaded through the
`tflite` entry point by the real aarch64 TFLite runtime, reproduces the outputs stored in
tests/vectors/tflite (computed on x86_64) and, fed the same windows as hourly readings through
`judge`, stays quiet on the clean ones and flags the spike. Prints one line per window and a
summary; exits 1 with the problems.

Usage: python arm64_model.py VECTORS.json
"""

from __future__ import annotations

import json
import math
import platform
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from gateway.core import plugins
from gateway.core.reading import Reading
from gateway.modules import litert

HOUR = 3600.0
#: runtime module -> its distribution's name
RUNTIMES = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime"}


def main(argv: list[str]) -> int:
    vectors = json.loads(Path(argv[1]).read_text())
    problems: list[str] = []
    machine = platform.machine()
    if machine != "aarch64":
        problems.append(f"running on {machine}, not aarch64")
    runtime = litert.interpreter_class().__module__.partition(".")[0]
    dist = RUNTIMES.get(runtime, runtime)
    print(
        f"{dist} {metadata.version(dist)} with numpy {np.__version__} on {machine}, "
        f"Python {platform.python_version()}"
    )

    cls = plugins.module_class("tflite")  # the entry point, as a configuration gets it
    mod = cls(module_id="arm64-smoke", options={})
    shipped = Path(sys.prefix) / "share" / "depin-gateway" / "models"
    if mod.manifest.path.parent != shipped:
        problems.append(f"model loaded from {mod.manifest.path}, not the wheel's copy in {shipped}")
    if mod.manifest.sha256 != vectors["sha256"]:
        problems.append("the stored vectors are for another model: regenerate them")
    print(f"{mod.manifest.name} {mod.manifest.version} from {mod.manifest.path.parent}")

    tol = float(vectors["tolerance"])
    worst = 0.0
    for case in vectors["cases"]:
        window = [float(v) for v in case["window"]]
        want = float(case["error"])
        got = mod.error(np.asarray(window, dtype=np.float32))
        diff = abs(got - want) / max(abs(want), 1e-12)
        worst = max(worst, diff)
        if not math.isclose(got, want, rel_tol=tol, abs_tol=1e-6):
            problems.append(f"{case['what']}: error {got!r}, stored {want!r}")
        # the same window as hourly readings through judge, a fresh module each time
        fresh = cls(module_id="arm64-smoke", options={})
        readings = [
            Reading("smoke", mod.quantity, "Cel", v, i * HOUR, True) for i, v in enumerate(window)
        ]
        verdicts = list(fresh.judge(readings))
        if any(v != (0.0, ()) for v in verdicts[:-1]):
            problems.append(f"{case['what']}: an opinion before the window was full")
        score, flags = verdicts[-1]
        if ("model" in flags) != (want >= mod.limit):
            problems.append(
                f"{case['what']}: flags {flags} for error {got:.4f} (limit {mod.limit})"
            )
        flagged = " FLAGGED" if flags else ""
        print(f"  {case['what']}: error {got:.6f} (stored {want:.6f}), score {score:.3f}{flagged}")

    n = len(vectors["cases"])
    print(f"{n} windows agree with x86_64 to {worst:.1e} relative (tolerance {tol:g})")
    for p in problems:
        print(f"PROBLEM: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
