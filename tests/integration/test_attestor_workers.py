"""Two attestor workers on a shared subscription with PostgreSQL, fed by three real gateways
through a real mosquitto, against one SQLite attestor listening to the same broker: every batch
stored once, the same chains and the same signed scores."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gateway.attestor import registry
from gateway.attestor.db import Database
from gateway.wire import cose, identity, payloads
from tests.brokers import Mosquitto
from tests.collector import Collector
from tests.gatewayproc import GatewayProcess, write_config
from tests.pg import database

EPOCH, GRACE = 6, 3


def _attestor(workdir: Path, store: str, port: int, *, workers: int, key: Path) -> Path:
    workdir.mkdir(parents=True, exist_ok=True)
    cfg = workdir / "attestor.toml"
    cfg.write_text(f"""
[attestor]
key_file = "{key}"
store = "{store}"
workers = {workers}
group = "{workdir.name}"
epoch = "{EPOCH} s"
grace = "{GRACE} s"
tick = "0.5 s"

[broker]
url = "mqtt://127.0.0.1:{port}"
""")
    return cfg


def _start(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.attestor", "run", "-c", str(cfg)],
            stdout=out,
            stderr=out,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def _sent(collector: Collector) -> dict[tuple[str, int, bytes], float]:
    """(did, seq, batch id) -> sealed of every batch the gateways published."""
    out = {}
    for m in collector.batches():
        payload = cose.verify1(m).payload
        b = payloads.decode_batch(payload)
        out[(b.did, b.seq, hashlib.sha256(payload).digest())] = float(b.sealed)
    return out


def _chains(store: str) -> set[tuple[str, int, bytes]]:
    db = Database(store)
    try:
        rows = db.execute("SELECT did, seq, batch_id FROM batches").fetchall()
        return {(str(d), int(s), bytes(b)) for d, s, b in rows}
    finally:
        db.close()


def _scores(store: str) -> dict[tuple[str, int], tuple[object, ...]]:
    db = Database(store)
    try:
        return {
            (a["did"], a["epoch_start"]): (a["expected"], a["verified"], a["flagged"],
                                          a["status"], a["score"], a["root"], a["published"])
            for a in registry.attestations(db)
        }  # fmt: skip
    finally:
        db.close()


def test_two_postgresql_workers_match_one_sqlite_attestor(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    key = tmp_path / "attestor.key"
    attestor_id = identity.generate(key)
    gateways = [
        GatewayProcess(write_config(tmp_path / f"gw{i}", mosquitto.port), tmp_path / f"gw{i}.log")
        for i in range(3)
    ]
    dids = [identity.load(tmp_path / f"gw{i}" / "device.key").did for i in range(3)]
    collector = Collector(mosquitto.port)
    with database() as pg:
        lite = str(tmp_path / "single" / "attestor.db")
        procs = []
        for store, workers, name in ((pg, 2, "pair"), (lite, 1, "single")):
            db = Database(store)
            for n, did in enumerate(dids):
                registry.register(db, did, f"gateway-{n}")
            db.close()
            cfg = _attestor(tmp_path / name, store, mosquitto.port, workers=workers, key=key)
            procs.append(_start(cfg, tmp_path / f"{name}.log"))
        try:
            time.sleep(1.5)  # both subscribed before the first batch
            for gw in gateways:
                gw.start()
            time.sleep(2.5 * EPOCH)
            for gw in gateways:
                assert gw.terminate() == 0
            published = _sent(collector)
            sent = set(published)
            assert len({d for d, _, _ in sent}) == 3
            # Wait until both have stored every batch and the last batch's epoch has closed.
            closes = max(published.values()) // EPOCH * EPOCH + EPOCH + GRACE
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if _chains(pg) == sent == _chains(lite) and time.time() > closes + 1.5:
                    break
                time.sleep(0.5)
            assert _chains(pg) == sent, "the worker pair lost or invented batches"
            assert _chains(lite) == sent
            pair, single = _scores(pg), _scores(lite)
        finally:
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                assert p.wait(30) == 0
            collector.close()
            for gw in gateways:
                if gw.running():
                    gw.kill()
        # Both signed every epoch of every device, with the same figures.
        assert pair and pair.keys() == single.keys()
        assert pair == single
        assert {d for d, _ in pair} == set(dids)
        assert any(v[1] > 0 for v in pair.values())  # readings were verified
        # Each worker took part: the shared subscription split the batches between them.
        pair_log = (tmp_path / "pair.log").read_text()
        assert "worker 0" in pair_log and "worker 1" in pair_log
        db = Database(pg)
        try:
            message = bytes(db.execute("SELECT message FROM attestations").fetchone()[0])
        finally:
            db.close()
        assert cose.verify1(message).public_key == attestor_id.public_key
