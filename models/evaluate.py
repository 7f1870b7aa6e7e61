"""Evaluate the module chain against the baselines, by the protocol of models/data/README.md.

    python models/evaluate.py [--config FILE] [--seed N] [--json] [--limit N] [--no-nab]

The chain is built from the `[[module]]` tables of FILE (a gateway config, or a file with only
`[[module]]` tables); without --config, from every module registered in the entry-point group
`depin_gateway.modules` with default options. Readings are fed in time order through
`ModuleChain.judge`, one call per timestamp holding every channel of a group read then.

Alarm of the chain: any flag (except `--ignore-flag`s), or a score above a threshold calibrated,
like the baselines' thresholds, on the clean calibration part only (see `calibrate`).
Requires numpy and river (the `eval` or `dev` extra) and the gateway's own dependencies; neither
numpy nor river is used at runtime. Run by an interpreter that lacks them, it re-runs itself
with the checkout's `.venv/bin/python` if there is one, or says in one line what to install.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import sys
import time
import tomllib
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parent.parent
# The harness beside this file, and this checkout's gateway ahead of any installed copy: the
# figures are of the code in this checkout.
sys.path[:0] = [str(ROOT / "models"), str(ROOT)]


def _missing(name: str | None) -> NoReturn:
    """`python3 models/evaluate.py` in a fresh checkout: use the checkout's venv (scripts/test
    fills it with the dev extra) rather than fail, or say in one line what is needed."""
    venv = ROOT / ".venv"
    python = venv / "bin" / "python"
    if python.exists() and Path(sys.prefix).resolve() != venv.resolve():
        print(f"models/evaluate.py: {name} is missing here; running with {python}", file=sys.stderr)
        os.execv(python, [str(python), *sys.argv])
    sys.exit(
        f"models/evaluate.py needs {name} (the eval extra): scripts/test creates .venv with it, "
        "after which this command works; or pip install -e '.[eval]' into a venv of your own"
    )


try:
    import baselines
    import datasets
    import faults
    import numpy as np
    import river  # noqa: F401  (the hst baseline imports it later; fail here, at once)

    from gateway.config import settings as gconfig
    from gateway.core import plugins
    from gateway.core.health import Health
    from gateway.core.reading import Reading
    from gateway.modules.chain import ModuleChain
except ModuleNotFoundError as e:
    if __name__ != "__main__":
        raise
    _missing(e.name)

TOLERANCE = 5  # an alarm up to this many samples after an event still catches it
FA_TARGET = 0.5  # false alarms per 1,000 clean readings the thresholds are calibrated to
DETECTORS = ("chain", *baselines.NAMES)
IGNORE_FLAGS = ("warmup", "warm-up")


# --------------------------------------------------------------------------- the chain


def module_configs(path: Path | None) -> list[gconfig.ModuleConfig]:
    """The `[[module]]` tables of `path`, checked by the gateway's own config loader; without a
    path, one table per registered module with default options."""
    if path is None:
        text = "".join(f'[[module]]\nid = "{n}"\nkind = "{n}"\n\n' for n in plugins.modules())
        base = Path.cwd()
        source = "<registered modules>"
    else:
        text = Path(path).read_text(encoding="utf-8")
        base = Path(path).absolute().parent
        source = str(path)
    doc = tomllib.loads(text)
    # a file of only [[module]] tables is fine: add what the loader requires around them
    if "device" not in doc:
        text += '\n[device]\nname = "evaluate"\n'
    if not doc.get("sensor"):
        text += '\n[[sensor]]\nid = "evaluate"\ndriver = "simulated"\n'
    return list(gconfig.loads(text, source=source, base_dir=base).modules)


ChainFactory = Callable[[], ModuleChain]


def chain_factory(configs: Sequence[gconfig.ModuleConfig]) -> ChainFactory:
    # No time budgets here: on a busy machine a call over budget would turn verdicts into
    # `module-error` and make the figures depend on the load. Cost is bench/modules.py's job.
    unbudgeted = [dataclasses.replace(c, budget=3600.0) for c in configs]
    return lambda: ModuleChain.from_config(unbudgeted, health=Health())


@dataclass
class ChainOut:
    score: np.ndarray  # per channel: (n,) score, NaN where no reading
    flagged: np.ndarray  # per channel: (n,) bool, a flag that counts as an alarm
    flags: dict[str, int] = field(default_factory=dict)


class ChainRunner:
    """Feeds one group through a fresh chain. The calibration part is the same in every run
    (faults come only after it), so the chain's state after it is kept and copied per run."""

    def __init__(self, factory: ChainFactory, ignore: Iterable[str]) -> None:
        self.factory = factory
        self.ignore = frozenset(ignore)
        self._prefix: dict[tuple[str, int], tuple[Any, list[ChainOut]] | None] = {}
        self.readings = 0
        self.seconds = 0.0

    def _feed(
        self,
        chain: ModuleChain,
        meta: Sequence[tuple[str, str, str]],
        t: np.ndarray,
        arrays: Sequence[np.ndarray],
        lo: int,
        hi: int,
        outs: list[ChainOut],
    ) -> None:
        ignore = self.ignore
        cols = [a.tolist() for a in arrays]
        ts = t.tolist()
        judge = chain.judge
        began = time.perf_counter()
        count = 0
        for i in range(lo, hi):
            batch = []
            where = []
            for k, (sensor, quantity, unit) in enumerate(meta):
                v = cols[k][i]
                if v == v:  # not NaN
                    batch.append(Reading(sensor, quantity, unit, v, ts[i], True))
                    where.append(k)
            if not batch:
                continue
            judge(batch)
            count += len(batch)
            for k, r in zip(where, batch, strict=True):
                o = outs[k]
                o.score[i] = r.score
                if r.flags:
                    hit = False
                    for f in r.flags:
                        o.flags[f] = o.flags.get(f, 0) + 1
                        if f not in ignore:
                            hit = True
                    o.flagged[i] = hit
        self.seconds += time.perf_counter() - began
        self.readings += count

    def run(
        self,
        key: str,
        meta: Sequence[tuple[str, str, str]],
        t: np.ndarray,
        arrays: Sequence[np.ndarray],
        cal_end: int,
    ) -> list[ChainOut]:
        n = len(t)
        pkey = (key, cal_end)
        if pkey not in self._prefix:
            chain = self.factory()
            outs = [ChainOut(np.full(n, np.nan), np.zeros(n, bool)) for _ in arrays]
            self._feed(chain, meta, t, arrays, 0, cal_end, outs)
            try:
                self._prefix[pkey] = (copy.deepcopy(chain), outs)
            except Exception:  # a module that cannot be copied: replay the prefix every run
                self._prefix[pkey] = None
        cached = self._prefix[pkey]
        if cached is None:
            chain = self.factory()
            outs = [ChainOut(np.full(n, np.nan), np.zeros(n, bool)) for _ in arrays]
            self._feed(chain, meta, t, arrays, 0, n, outs)
            return outs
        snap, pre = cached
        chain = copy.deepcopy(snap)
        outs = [ChainOut(o.score.copy(), o.flagged.copy(), dict(o.flags)) for o in pre]
        self._feed(chain, meta, t, arrays, cal_end, n, outs)
        return outs


# --------------------------------------------------------------------------- scoring


def calibrate(scores: np.ndarray, n_readings: int, allowed_extra: int = 0) -> float:
    """Threshold t (alarm: score > t) such that at most FA_TARGET per 1,000 of the clean
    calibration readings alarm; NaN scores are ignored. `allowed_extra` < 0 takes alarms
    already raised otherwise (the chain's flags) off the budget."""
    s = np.sort(scores[np.isfinite(scores)])[::-1]
    if len(s) == 0:
        return math.inf
    allowed = max(0, int(FA_TARGET * n_readings / 1000) + allowed_extra)
    return float(s[allowed]) if allowed < len(s) else -math.inf


def runs(mask: np.ndarray, lo: int = 0) -> list[tuple[int, int]]:
    """Maximal runs of True in mask[lo:] as [start, end) in mask's indices."""
    m = np.asarray(mask[lo:], dtype=np.int8)
    if len(m) == 0:
        return []
    d = np.diff(np.concatenate(([0], m, [0])))
    starts = np.flatnonzero(d == 1)
    ends = np.flatnonzero(d == -1)
    return [(int(a) + lo, int(b) + lo) for a, b in zip(starts, ends, strict=True)]


@dataclass
class Counts:
    events: int = 0
    caught: int = 0
    alarms: int = 0  # alarm events
    true_alarms: int = 0  # alarm events touching an event (or its tolerance)

    def add(self, other: Counts) -> None:
        self.events += other.events
        self.caught += other.caught
        self.alarms += other.alarms
        self.true_alarms += other.true_alarms

    def prf(self) -> tuple[float, float, float]:
        p = self.true_alarms / self.alarms if self.alarms else 0.0
        r = self.caught / self.events if self.events else 0.0
        f = 2 * p * r / (p + r) if p + r else 0.0
        return p, r, f


def match(
    alarm: np.ndarray, events: Sequence[tuple[int, int]], lo: int, tol: int = TOLERANCE
) -> Counts:
    """Events [start, end) caught by an alarm in [start, end + tol); alarm events (merged runs
    of consecutive alarms from `lo` on) that overlap such a span are true."""
    n = len(alarm)
    idx = np.flatnonzero(alarm)
    caught = 0
    span = np.zeros(n, bool)
    for s, e in events:
        hi = min(n, e + tol)
        span[s:hi] = True
        k = np.searchsorted(idx, s)
        if k < len(idx) and idx[k] < hi:
            caught += 1
    al = runs(alarm, lo)
    true = sum(1 for a, b in al if span[a:b].any())
    return Counts(len(events), caught, len(al), true)


# --------------------------------------------------------------------------- evaluation


def prf(c: Counts) -> dict[str, float]:
    p, r, f = c.prf()
    return {"precision": p, "recall": r, "f1": f, **c.__dict__}


def _seed(seed: int, *parts: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(p.encode()) for p in parts)])


def _warm(cal_end: int) -> int:
    return min(cal_end // 2, 2 * baselines.HST_WINDOW)


@dataclass
class Detectors:
    """Per-channel scores of every detector, thresholds from the clean calibration part."""

    hst: baselines.HST

    def scores(self, x: np.ndarray, cal_end: int) -> dict[str, np.ndarray]:
        return {
            "zlevel": baselines.zlevel(x, cal_end),
            "zdiff": baselines.zdiff(x, cal_end),
            "hst": self.hst(x, cal_end),
        }


def _alarm(score: np.ndarray, thr: float) -> np.ndarray:
    with np.errstate(invalid="ignore"):
        return np.asarray(np.nan_to_num(score, nan=-np.inf) > thr)


def _chain_threshold(out: ChainOut, warm: int, cal_end: int) -> float:
    score = out.score[warm:cal_end]
    flagged = out.flagged[warm:cal_end]
    n = int(np.isfinite(score).sum())
    unflagged = np.where(flagged, np.nan, score)
    return calibrate(unflagged, n, -len(runs(flagged)))


def evaluate(
    factory: ChainFactory,
    *,
    seed: int = 0,
    limit: int | None = None,
    nab: bool = True,
    nab_limit: int | None = None,
    ignore_flags: Iterable[str] = IGNORE_FLAGS,
) -> dict[str, Any]:
    began = time.perf_counter()
    runner = ChainRunner(factory, ignore_flags)
    det = Detectors(baselines.HST(seed))
    groups = datasets.load_groups(seed, limit)
    results: dict[str, dict[str, Counts]] = {
        k: {d: Counts() for d in DETECTORS} for k in faults.FAULTS
    }
    clean_fa = {d: [0, 0] for d in DETECTORS}  # alarm events, readings
    flag_counts: dict[str, int] = {}
    thresholds: dict[str, dict[str, float]] = {}
    chain_cal_alarms = [0, 0]
    per_target: dict[str, dict[str, Counts]] = {}

    for g in groups:
        meta = [(c.sensor, c.quantity, c.unit) for c in g.channels]
        names = [c.name for c in g.channels]
        clean = {c.name: c.x for c in g.channels}
        warm = _warm(g.cal_end)
        lo = g.cal_end

        # clean run: thresholds from [warm, cal_end), false alarms from [cal_end, n)
        outs = runner.run(g.name, meta, g.t, [clean[n] for n in names], g.cal_end)
        thr: dict[str, dict[str, float]] = {}
        for c, out in zip(g.channels, outs, strict=True):
            for f, k in out.flags.items():
                flag_counts[f] = flag_counts.get(f, 0) + k
            t_chain = _chain_threshold(out, warm, g.cal_end)
            sc = det.scores(c.x, g.cal_end)
            n_cal = int(np.isfinite(c.x[warm : g.cal_end]).sum())
            thr[c.name] = {"chain": t_chain}
            for d, s in sc.items():
                thr[c.name][d] = calibrate(s[warm : g.cal_end], n_cal)
            thresholds[c.name] = thr[c.name]
            if not c.real:
                continue
            chain_alarm = out.flagged | _alarm(out.score, t_chain)
            chain_cal_alarms[0] += len(runs(chain_alarm[: g.cal_end], warm))
            chain_cal_alarms[1] += n_cal
            n_eval = int(np.isfinite(c.x[lo:]).sum())
            for d in DETECTORS:
                alarm = chain_alarm if d == "chain" else _alarm(sc[d], thr[c.name][d])
                clean_fa[d][0] += len(runs(alarm, lo))
                clean_fa[d][1] += n_eval

        # fault runs: one fault type at a time, one target channel (or pair) per run
        for kind in faults.FAULTS:
            if kind == "implausible":
                targets: list[Any] = list(g.pairs)
            else:
                targets = [c.name for c in g.channels if c.real]
            for target in targets:
                rng = _seed(seed, g.name, kind, str(target))
                series, events = faults.inject(kind, clean, target, g.cal_end, rng)
                if not events:
                    continue
                spans = [(e.start, e.end) for e in events]
                watched = list(target) if isinstance(target, tuple) else [target]
                outs = runner.run(g.name, meta, g.t, [series[n] for n in names], g.cal_end)
                alarms: dict[str, np.ndarray] = {d: np.zeros(g.n, bool) for d in DETECTORS}
                for name in watched:
                    out = outs[names.index(name)]
                    alarms["chain"] |= out.flagged | _alarm(out.score, thr[name]["chain"])
                    for d, score in det.scores(series[name], g.cal_end).items():
                        alarms[d] |= _alarm(score, thr[name][d])
                label = f"{kind}:{'+'.join(watched)}"
                per_target[label] = {}
                for d in DETECTORS:
                    counts = match(alarms[d], spans, lo)
                    results[kind][d].add(counts)
                    per_target[label][d] = counts

    nab_out: dict[str, Counts] = {d: Counts() for d in DETECTORS}
    nab_files: dict[str, dict[str, Any]] = {}
    if nab:
        for ns in datasets.load_nab():
            t, x, windows, cal_end = ns.t, ns.x, ns.windows, ns.cal_end
            if nab_limit and nab_limit < len(t):
                t, x = t[:nab_limit], x[:nab_limit]
                windows = [(a, min(b, nab_limit)) for a, b in windows if a < nab_limit]
                cal_end = min(cal_end, nab_limit // 2)
            warm = _warm(cal_end)
            meta = [(f"nab-{ns.name}", ns.quantity, ns.unit)]
            out = runner.run(f"nab/{ns.name}", meta, t, [x], cal_end)[0]
            t_chain = _chain_threshold(out, warm, cal_end)
            nab_alarms = {"chain": out.flagged | _alarm(out.score, t_chain)}
            n_cal = cal_end - warm
            for d, nscore in det.scores(x, cal_end).items():
                nab_alarms[d] = _alarm(nscore, calibrate(nscore[warm:cal_end], n_cal))
            nab_files[ns.name] = {}
            for d in DETECTORS:
                # a window is detected by an alarm inside it (no tolerance after it)
                counts = match(nab_alarms[d], windows, cal_end, tol=0)
                nab_out[d].add(counts)
                nab_files[ns.name][d] = prf(counts)

    return {
        "seed": seed,
        "limit": limit,
        "fa_target_per_1000": FA_TARGET,
        "faults": {k: {d: prf(c) for d, c in v.items()} for k, v in results.items()},
        "nab": {d: prf(c) for d, c in nab_out.items()} if nab else None,
        "per_target": {k: {d: prf(c) for d, c in v.items()} for k, v in per_target.items()},
        "nab_files": nab_files,
        "false_alarms_per_1000_clean": {
            d: (1000.0 * a / n if n else 0.0) for d, (a, n) in clean_fa.items()
        },
        "chain_false_alarms_per_1000_calibration": (
            1000.0 * chain_cal_alarms[0] / chain_cal_alarms[1] if chain_cal_alarms[1] else 0.0
        ),
        "chain_flags": dict(sorted(flag_counts.items())),
        "thresholds": {  # None: never alarms (+inf) or always (-inf); JSON has no infinities
            ch: {d: (v if math.isfinite(v) else None) for d, v in per.items()}
            for ch, per in thresholds.items()
        },
        "chain_readings": runner.readings,
        "chain_us_per_reading": 1e6 * runner.seconds / runner.readings if runner.readings else 0,
        "seconds": time.perf_counter() - began,
    }


# --------------------------------------------------------------------------- output


def table(res: dict[str, Any], modules: Sequence[str]) -> str:
    head = f"{'':<13}{'events':>7}"
    for d in DETECTORS:
        head += f" | {d:^17}"
    sub = f"{'':<13}{'':>7}" + " | {:>5} {:>5} {:>5}".format("P", "R", "F1") * len(DETECTORS)
    lines = [
        f"chain: {', '.join(modules) or '(no modules)'}",
        f"seed {res['seed']}, thresholds calibrated to {res['fa_target_per_1000']} false alarms"
        " per 1,000 clean calibration readings",
        "",
        head,
        sub,
        "-" * len(sub),
    ]

    def row(label: str, per: dict[str, dict[str, float]]) -> str:
        line = f"{label:<13}{per['chain']['events']:>7}"
        for d in DETECTORS:
            c = per[d]
            line += f" | {c['precision']:5.2f} {c['recall']:5.2f} {c['f1']:5.2f}"
        return line

    for kind, per in res["faults"].items():
        lines.append(row(kind, per))
    if res["nab"] is not None:
        lines.append(row("NAB windows", res["nab"]))
    lines.append("-" * len(sub))
    fa = res["false_alarms_per_1000_clean"]
    line = f"{'FA/1000 clean':<20}"
    for d in DETECTORS:
        line += f" | {fa[d]:17.2f}"
    lines.append(line)
    lines.append("")
    lines.append(
        f"chain: {res['chain_readings']} readings judged, "
        f"{res['chain_us_per_reading']:.1f} us/reading (incl. Reading construction); "
        f"flags seen on clean data: {res['chain_flags'] or 'none'}"
    )
    lines.append(f"runtime {res['seconds']:.1f} s")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", type=Path, help="TOML file with [[module]] tables")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.add_argument("--limit", type=int, help="use only the first N samples of each series")
    ap.add_argument("--no-nab", action="store_true", help="skip the NAB windows")
    ap.add_argument(
        "--ignore-flag",
        action="append",
        default=list(IGNORE_FLAGS),
        help="a flag that is not an alarm (repeatable)",
    )
    a = ap.parse_args(argv)
    configs = module_configs(a.config)
    res = evaluate(
        chain_factory(configs),
        seed=a.seed,
        limit=a.limit,
        nab=not a.no_nab,
        nab_limit=a.limit,
        ignore_flags=a.ignore_flag,
    )
    res["modules"] = [{"id": m.id, "kind": m.kind} for m in configs]
    if a.json:
        json.dump(res, sys.stdout, indent=1, default=float)
        print()
    else:
        print(table(res, [f"{m.id} ({m.kind})" for m in configs]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
