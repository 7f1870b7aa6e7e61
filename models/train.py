"""Train the shipped TFLite model(s) and write each `.tflite` with its manifest beside it.

    pip install -e '.[train,eval]'           # TensorFlow (training only, never at runtime)
    python models/train.py                   # the shipped model from models/data (TMY)
    python models/train.py --seed 3 --out /tmp/models
    python models/train.py --csv export.csv --quantity temperature --name my-temp-ae

The model, `temperature-ae` by default: a small float32 dense autoencoder over a window of the
last `window` levels of one quantity (24 hourly temperatures). Everything but filling the window
is inside the graph: normalisation with the manifest's mean/std, centring on the window's own
mean (so the absolute level does not matter, only the shape), the autoencoder, and the
reconstruction error (RMS over the window, with the newest sample weighted up so a fault is seen
when it arrives). The graph's one output is that error; the gateway's `tflite` module divides it
by the manifest's `threshold` (score, clipped to [0, 1]; flag `model` at >= 1).

Data:
- default: the NREL TMY3 Greensboro hourly dry-bulb temperature of models/data, clean part
  only: the first 40 % of the year (the evaluation injects faults only after it). The first 30 %
  trains, the next 10 % (held out) calibrates the threshold.
- `--csv FILE`: a user's own spool export, a CSV with a header line `t,value` and one reading per
  line: `t` Unix seconds (float), `value` in the quantity's SenML unit (e.g. Cel); rows with an
  empty value are gaps (windows never span them). Give the readings of one series, sampled at a
  steady interval, free of known faults; the first 75 % trains, the rest calibrates.

Threshold: the largest error on the held-out windows times `--margin` (default 1.15), so clean
data like the training data stays silent. Reproducible: the same `--seed` and data give the same
weights (TensorFlow's deterministic ops, one thread).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

NEWEST_WEIGHT = 8.0  # the newest sample's weight in the error (the others weigh 1)


def load_series(args: argparse.Namespace) -> tuple[np.ndarray, int, str, float]:
    """(values with NaN gaps, split index train|calibration, source, seconds between readings)"""
    if args.csv:
        ts, vals = [], []
        with open(args.csv, newline="") as f:
            for row in csv.DictReader(f):
                text = (row.get("value") or "").strip()
                ts.append(float(row["t"]))
                vals.append(float(text) if text else np.nan)
        x = np.array(vals, dtype=float)
        interval = float(np.median(np.diff(ts))) if len(ts) > 1 else 0.0
        return x, int(len(x) * 0.75), f"csv:{Path(args.csv).name}", interval
    from datasets import load_tmy

    group = load_tmy()
    ch = group.channel(f"tmy/{args.quantity}")
    clean = ch.x[: group.cal_end]  # the clean part only
    interval = float(np.median(np.diff(group.t)))
    return clean, int(len(clean) * 0.75), "NREL TMY3 723170 (Greensboro NC), first 40 %", interval


def windows(x: np.ndarray, w: int) -> np.ndarray:
    out = np.lib.stride_tricks.sliding_window_view(x, w)
    return out[~np.isnan(out).any(axis=1)].astype(np.float32)


def build(args: argparse.Namespace) -> dict[str, Any]:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.keras.utils.set_random_seed(args.seed)
    tf.config.experimental.enable_op_determinism()
    tf.config.threading.set_inter_op_parallelism_threads(1)
    tf.config.threading.set_intra_op_parallelism_threads(1)

    x, split, source, interval = load_series(args)
    w = args.window
    train = windows(x[:split], w)
    held = windows(x[split:], w)
    if len(train) < 100 or len(held) < 20:
        raise SystemExit(f"too little clean data: {len(train)} training, {len(held)} held-out")
    finite = x[:split][~np.isnan(x[:split])]
    mean = float(np.mean(finite))
    # spread of a level around its own window's mean: the scale the autoencoder sees
    std = float(np.std(train - train.mean(axis=1, keepdims=True)))

    weights = np.ones(w, dtype=np.float32)
    weights[-1] = NEWEST_WEIGHT
    weights /= weights.sum()

    def prepare(v: tf.Tensor) -> tf.Tensor:
        z = (v - mean) / std
        return z - tf.reduce_mean(z, axis=1, keepdims=True)

    ae = tf.keras.Sequential(
        [
            tf.keras.Input((w,)),
            tf.keras.layers.Dense(args.hidden, activation="tanh"),
            tf.keras.layers.Dense(args.code, activation="tanh"),
            tf.keras.layers.Dense(args.hidden, activation="tanh"),
            tf.keras.layers.Dense(w),
        ]
    )
    zt = prepare(tf.constant(train)).numpy()
    ae.compile(optimizer=tf.keras.optimizers.Adam(args.lr), loss="mse")
    ae.fit(zt, zt, epochs=args.epochs, batch_size=64, shuffle=True, verbose=0)

    wt = tf.constant(weights)

    class Scorer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([1, w], tf.float32, name="window")])
        def __call__(self, v: tf.Tensor) -> tf.Tensor:
            z = prepare(v)
            err = ae(z) - z
            return tf.sqrt(tf.reduce_sum(wt * err * err, axis=1), name="error")

    scorer = Scorer()
    fn = scorer.__call__.get_concrete_function()
    conv = tf.lite.TFLiteConverter.from_concrete_functions([fn], scorer)
    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    tflite = conv.convert()

    # threshold from the held-out clean windows, scored by the converted model itself
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_content=tflite)
    it.allocate_tensors()
    i_in = it.get_input_details()[0]["index"]
    i_out = it.get_output_details()[0]["index"]

    def score(v: np.ndarray) -> float:
        it.set_tensor(i_in, v.reshape(1, w))
        it.invoke()
        return float(it.get_tensor(i_out).reshape(-1)[0])

    errs = np.array([score(v) for v in held])
    train_errs = np.array([score(v) for v in train[:: max(1, len(train) // 2000)]])
    threshold = float(np.max(errs)) * args.margin
    return {
        "tflite": tflite,
        "mean": mean,
        "std": std,
        "threshold": threshold,
        "source": source,
        "interval": interval,
        "stats": {
            "train_windows": len(train),
            "heldout_windows": len(held),
            "heldout_error_p50": float(np.median(errs)),
            "heldout_error_p999": float(np.quantile(errs, 0.999)),
            "heldout_error_max": float(np.max(errs)),
            "train_error_p50": float(np.median(train_errs)),
        },
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--name", default="temperature-ae")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--quantity", default="temperature")
    p.add_argument("--unit", default="Cel")
    p.add_argument("--csv", help="a spool export: CSV with header t,value (see above)")
    p.add_argument("--window", type=int, default=24)
    p.add_argument("--hidden", type=int, default=16)
    p.add_argument("--code", type=int, default=4)
    p.add_argument("--epochs", type=int, default=60)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--margin", type=float, default=1.15)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--out", type=Path, default=HERE)
    args = p.parse_args(argv)

    r = build(args)
    args.out.mkdir(parents=True, exist_ok=True)
    model = args.out / f"{args.name}.tflite"
    model.write_bytes(r["tflite"])
    manifest = {
        "name": args.name,
        "version": args.version,
        "format": "tflite",
        "file": model.name,
        "sha256": hashlib.sha256(r["tflite"]).hexdigest(),
        "inputs": {
            "quantities": [args.quantity],
            "unit": args.unit,
            "window": args.window,
            "interval": r["interval"],
            "shape": [1, args.window],
            "dtype": "float32",
            "order": "oldest first; the newest reading last",
        },
        "normalisation": {
            "in_graph": True,
            "mean": {args.quantity: r["mean"]},
            "std": {args.quantity: r["std"]},
            "then": "minus the window's own mean",
        },
        "output": {
            "shape": [1],
            "dtype": "float32",
            "meaning": (
                "reconstruction error of the normalised, centred window (weighted RMS, newest "
                f"sample weight {NEWEST_WEIGHT:g}); score = error / threshold clipped to [0, 1], "
                "flag 'model' at >= 1"
            ),
        },
        "threshold": r["threshold"],
        "training": {
            "source": r["source"],
            "seed": args.seed,
            "epochs": args.epochs,
            "layers": [args.window, args.hidden, args.code, args.hidden, args.window],
            "margin": args.margin,
            **r["stats"],
        },
    }
    (args.out / f"{args.name}.json").write_text(json.dumps(manifest, indent=2) + "\n")
    print(
        f"wrote {model} ({len(r['tflite'])} bytes) and its manifest; threshold {r['threshold']:.4g}"
    )
    print(json.dumps(r["stats"], indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
