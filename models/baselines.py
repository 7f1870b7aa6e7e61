"""Baselines the chain must beat, run on the same data in the same evaluation.

Each scorer maps a series (NaN = no reading, skipped) to one score per sample (NaN where there is
no reading); higher means more anomalous. Scores are causal: sample i is scored from samples
before it (and itself), as a gateway would have to. Thresholds are not set here but calibrated
on clean held-out data by `evaluate.calibrate`.

- `zlevel`: rolling robust z-score of the level, |x - median| / (1.4826 MAD), over the previous
  `window` readings;
- `zdiff`: the same on first differences;
- `hst`: river's HalfSpaceTrees on (level, first difference), both scaled to [0, 1] with the
  calibration part's range (HST needs bounded features); score first, then learn.
"""

from __future__ import annotations

import copy

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

WINDOW = 48
HST_TREES = 10
HST_HEIGHT = 8
HST_WINDOW = 250
NAMES = ("zlevel", "zdiff", "hst")


def _robust_z(v: np.ndarray, window: int, floor: float) -> np.ndarray:
    """|v[i] - median(v[i-window:i])| / max(1.4826 MAD, floor); NaN for the first `window`."""
    n = len(v)
    out = np.full(n, np.nan)
    if n <= window:
        return out
    w = sliding_window_view(v[:-1], window)  # w[j] = v[j : j+window], scores v[j+window]
    med = np.median(w, axis=1)
    mad = np.median(np.abs(w - med[:, None]), axis=1) * 1.4826
    scale = np.maximum(mad, floor)
    out[window:] = np.abs(v[window:] - med) / scale
    return out


def _floor(v: np.ndarray, cal: int) -> float:
    d = np.diff(v[:cal])
    s = float(np.std(d)) if len(d) > 1 else 0.0
    return max(0.1 * s, 1e-9)


def _spread(values: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Scores of the readings present, back at their positions in `values` (NaN elsewhere)."""
    full = np.full(len(values), np.nan)
    full[np.isfinite(values)] = scores
    return full


def zlevel(x: np.ndarray, cal_end: int, window: int = WINDOW) -> np.ndarray:
    ok = np.isfinite(x)
    v = x[ok]
    cal = int(ok[:cal_end].sum())
    return _spread(x, _robust_z(v, window, _floor(v, cal)))


def zdiff(x: np.ndarray, cal_end: int, window: int = WINDOW) -> np.ndarray:
    ok = np.isfinite(x)
    v = x[ok]
    cal = int(ok[:cal_end].sum())
    d = np.concatenate(([0.0], np.diff(v)))
    z = _robust_z(d, window, _floor(v, cal))
    z[: window + 1] = np.nan
    return _spread(x, z)


class HST:
    """river.anomaly.HalfSpaceTrees on (level, difference); `prefix` caches the model state after
    the calibration part so runs that share it (faults come only after it) do not redo it."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self._cache: dict[tuple[int, bytes], tuple[object, np.ndarray, float]] = {}

    def _model(self, v: np.ndarray, cal: int) -> object:
        from river import anomaly

        d = np.diff(v[:cal])
        lo, hi = float(np.min(v[:cal])), float(np.max(v[:cal]))
        pad = 0.1 * (hi - lo) + 1e-9
        dm = float(np.max(np.abs(d))) * 1.1 + 1e-9 if len(d) else 1.0
        return anomaly.HalfSpaceTrees(
            n_trees=HST_TREES,
            height=HST_HEIGHT,
            window_size=HST_WINDOW,
            limits={"x": (lo - pad, hi + pad), "d": (-dm, dm)},
            seed=self.seed,
        )

    @staticmethod
    def _run(model: object, v: np.ndarray, start: int, prev: float) -> np.ndarray:
        out = np.empty(len(v) - start)
        score_one = model.score_one  # type: ignore[attr-defined]
        learn_one = model.learn_one  # type: ignore[attr-defined]
        for i in range(start, len(v)):
            xi = float(v[i])
            feat = {"x": xi, "d": xi - prev if i else 0.0}
            out[i - start] = score_one(feat)
            learn_one(feat)
            prev = xi
        return out

    def __call__(self, x: np.ndarray, cal_end: int) -> np.ndarray:
        ok = np.isfinite(x)
        v = x[ok]
        cal = int(ok[:cal_end].sum())
        key = (cal, v[:cal].tobytes())
        if key not in self._cache:
            model = self._model(v, cal)
            head = self._run(model, v[:cal], 0, 0.0)
            head[: min(cal, 2 * HST_WINDOW)] = np.nan  # HST scores nothing useful before then
            self._cache[key] = (model, head, float(v[cal - 1]) if cal else 0.0)
        model, head, prev = self._cache[key]
        model = copy.deepcopy(model)
        tail = self._run(model, v, cal, prev) if cal < len(v) else np.empty(0)
        return _spread(x, np.concatenate((head, tail)))
