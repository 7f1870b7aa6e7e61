"""`depin-gateway status`: the local gateway at a glance, for an owner on SSH.

Two sources, both local: the spool (read-only: chain position, what waits for the broker, drops,
the newest readings not yet sealed) and the status file the daemon keeps in its runtime
directory (`$RUNTIME_DIRECTORY/status.json`, on tmpfs under systemd, so it costs the SD card
nothing): the latest values and flags, the uplink, errors, the latest attestation.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import cbor2

from gateway import payloads
from gateway.config import Config

STATUS_FILE = "status.json"
DEFAULT_RUNTIME = Path("/run/depin-gateway")


def runtime_dir() -> Path | None:
    """Where the daemon writes its status file: systemd's RuntimeDirectory, when it has one."""
    env = os.environ.get("RUNTIME_DIRECTORY")
    return Path(env.split(":")[0]) if env else None


def spool_facts(path: Path, *, newest: int = 200) -> dict[str, Any]:
    if not path.exists():
        return {"error": f"{path} does not exist (the gateway has not run yet?)"}
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as e:
        return {"error": f"{path}: {e}"}
    try:
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        pending, oldest_pending = con.execute("SELECT count(*), min(t) FROM readings").fetchone()
        sealed, sealed_n, oldest_sealed, last_sealed = con.execute(
            "SELECT count(*), coalesce(sum(n), 0), min(first_t), max(sealed) FROM batches"
        ).fetchone()
        dropped = con.execute("SELECT coalesce(sum(n), 0) FROM drops").fetchone()[0]
        rows = con.execute(
            "SELECT record FROM readings ORDER BY id DESC LIMIT ?", (newest,)
        ).fetchall()
    except sqlite3.Error as e:
        return {"error": f"{path}: not a readable spool: {e}"}
    finally:
        con.close()
    latest: dict[str, dict[str, Any]] = {}
    for (record,) in rows:
        r = cbor2.loads(record)
        latest.setdefault(
            r[payloads.N],
            {"v": r.get(payloads.V), "u": r[payloads.U], "t": r[payloads.T],
             "af": r.get(payloads.FLAGS, [])},
        )  # fmt: skip
    next_seq = int(meta.get("next_seq", 0))
    return {
        "did": meta.get("did"),
        "next_seq": next_seq,
        "pending": pending,
        "oldest_pending": oldest_pending,
        "sealed_batches": sealed,
        "sealed_readings": sealed_n,
        "oldest_sealed": oldest_sealed,
        "last_sealed": last_sealed,
        "dropped": dropped,
        "latest": latest,
    }


def read_status(cfg: Config) -> dict[str, Any] | None:
    candidates = [d / STATUS_FILE for d in (runtime_dir(), DEFAULT_RUNTIME) if d is not None]
    for path in candidates:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict):
            doc["_path"] = str(path)
            return doc
    return None


def _age(t: float | None, now: float) -> str:
    if t is None:
        return "-"
    s = max(0.0, now - float(t))
    if s < 120:
        return f"{s:.0f} s ago"
    if s < 7200:
        return f"{s / 60:.0f} min ago"
    return f"{s / 3600:.1f} h ago"


def render(cfg: Config, spool: dict[str, Any], status: dict[str, Any] | None, now: float) -> str:
    out = [f"gateway {cfg.device.name}"]
    if "error" in spool:
        out.append(f"  spool: {spool['error']}")
        spool = {}
    else:
        out.append(f"  device {spool['did']}")
    health = (status or {}).get("health") or {}
    state = (status or {}).get("state") or {}
    if status is None:
        out.append("  daemon: no status file (not running, or not under systemd); spool only")
    else:
        age = _age(health.get("t"), now)
        up = health.get("uptime_s")
        out.append(
            f"  daemon: status {age}, up {up:.0f} s, version {health.get('version')}"
            if isinstance(up, int | float)
            else f"  daemon: status {age}"
        )
    out.append("sensors")
    shown = False
    for sid, quantities in sorted((state.get("sensors") or {}).items()):
        for q, r in sorted(quantities.items()):
            shown = True
            value = "failed" if r.get("v") is None else f"{r['v']:g} {r.get('u', '')}"
            flags = f"  [{', '.join(r['af'])}]" if r.get("af") else ""
            out.append(f"  {sid}/{q:<12} {value:<16} {_age(r.get('t'), now)}{flags}")
    if not shown:
        for name, r in sorted(spool.get("latest", {}).items()):
            shown = True
            value = "failed" if r.get("v") is None else f"{r['v']:g} {r['u']}"
            flags = f"  [{', '.join(r['af'])}]" if r.get("af") else ""
            out.append(f"  {name:<20} {value:<16} {_age(r.get('t'), now)}{flags} (from the spool)")
    if not shown:
        out.append("  no readings yet")
    errors = health.get("sensor_errors") or {}
    if errors:
        out.append("  errors: " + ", ".join(f"{k} {v}" for k, v in sorted(errors.items())))
    out.append("queue")
    if spool:
        out.append(
            f"  {spool['pending']} readings waiting to be sealed (oldest "
            f"{_age(spool['oldest_pending'], now)}), {spool['sealed_batches']} sealed batches "
            f"({spool['sealed_readings']} readings) waiting for the broker"
        )
        if spool["dropped"]:
            out.append(f"  {spool['dropped']} readings dropped at the spool's size cap")
    out.append("uplink")
    if health:
        state_text = "connected" if health.get("connected") else "NOT connected"
        out.append(
            f"  {state_text} to {cfg.uplink.host}:{cfg.uplink.port} (MQTT "
            f"{health.get('protocol') or '?'}), {health.get('batches_acked', 0)} batches "
            f"acknowledged since start"
        )
        if health.get("last_error"):
            out.append(f"  last error: {health['last_error']}")
    else:
        out.append(f"  broker {cfg.uplink.host}:{cfg.uplink.port}: unknown (no status file)")
    out.append("chain")
    if spool:
        last = spool["next_seq"] - 1
        out.append(
            "  no batch sealed yet"
            if last < 0
            else f"  last sealed batch seq {last} ({_age(spool['last_sealed'], now)})"
            if spool["last_sealed"]
            else f"  last sealed batch seq {last} (acknowledged)"
        )
    att = health.get("attestation")
    if att:
        out.append(
            f"  latest attestation: score {att['score']:.3f}, chain {att.get('status')}, "
            f"by {att.get('attestor')}"
        )
    return "\n".join(out) + "\n"


def main(cfg: Config, *, as_json: bool = False) -> str:
    now = time.time()
    spool = spool_facts(cfg.spool.path)
    status = read_status(cfg)
    if as_json:
        return json.dumps({"spool": spool, "status": status}, indent=2, default=str) + "\n"
    return render(cfg, spool, status, now)
