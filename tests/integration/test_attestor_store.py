"""The attestor's chain handling and scoring, against SQLite and PostgreSQL alike."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import cbor2
import pytest

from gateway.attestor import registry
from gateway.attestor.config import loads
from gateway.attestor.service import Worker
from gateway.wire import cose, merkle, payloads
from gateway.wire.identity import Identity
from gateway.wire.score import score
from tests import make_batches as mb

EPOCH = 3600
START = mb.SEALED - mb.SEALED % EPOCH  # the epoch the test batches are sealed in


def _worker(store: str, tmp_path: Path) -> Worker:
    cfg = loads(
        f'[attestor]\nstore = "{store}"\nepoch = "1 h"\ngrace = "0 s"\n'
        '[broker]\nurl = "mqtt://127.0.0.1:1"\n',
        base_dir=tmp_path,
    )
    return Worker(cfg, mb.identity(mb.SEED_B))


def birth(ident: Identity, *, started: float, interval: float = 60.0) -> bytes:
    payload = payloads.encode_birth(
        did=ident.did,
        version="test",
        boot=mb.BOOT,
        started=started,
        config_sha256=bytes(32),
        sensors=[{"id": "climate", "driver": "bme280", "quantities": ["temperature", "humidity"],
                  "interval": interval}],
        modules=mb.MODULES,
        next_seq=0,
    )  # fmt: skip
    return cose.sign1(ident, cose.TYP_BIRTH, payload)


def test_chain_kinds_are_recorded_exactly_once(store: str, tmp_path: Path) -> None:
    w = _worker(store, tmp_path)
    chain = mb.Chain()
    b = chain.take(6)
    kinds = [w.handle("t", b[0].message).kind]
    assert kinds == ["unknown-device"]  # not registered: rejected, not learned
    registry.register(w.db, chain.ident.did, "balcony")
    for x in (b[0], b[1], b[1], b[3], b[2], b[4], chain.alternative(4), b[5], b[5]):
        kinds.append(w.handle("t", x.message).kind)
    assert kinds[1:] == ["valid", "valid", "duplicate", "gap", "reordered", "valid",
                         "equivocation", "valid", "duplicate"]  # fmt: skip
    dev = registry.devices(w.db)[0]
    assert dev["last_seq"] == 5 and dev["batches"] == 6 and dev["evidence"] == 1
    assert registry.counts(w.db)[chain.ident.did]["duplicate"] == 2
    assert registry.counts(w.db)[""]["unknown-device"] == 1


def test_hand_computed_epoch_score(store: str, tmp_path: Path) -> None:
    w = _worker(store, tmp_path)
    dev = mb.identity()
    registry.register(w.db, dev.did, "balcony", now=START)
    # Born 30 minutes into the epoch, 2 quantities every 60 s: 2 x 1800 / 60 = 60 expected.
    assert w.handle("t", birth(dev, started=START + 1800)).kind == "birth"
    chain = mb.Chain(ident=dev)
    flagged = payloads.encode_record("climate/temperature", "Cel", 99.0, mb.SEALED, 1.0, ["spike"])
    recs = [mb.record(i) for i in range(9)] + [flagged]  # 10 readings, 1 flagged
    for _ in range(3):
        assert w.handle("t", chain.next(recs).message).kind == "valid"
    assert w.tick(now=START + EPOCH + 1) == 1
    (a,) = registry.attestations(w.db)
    assert (a["expected"], a["verified"], a["flagged"], a["status"]) == (60, 30, 3, "ok")
    # availability 30/60 x quality (1 - 3/30) x clock 1 x chain 1 = 0.45
    assert a["score"] == pytest.approx(0.45) == score(60, 30, 30, 3, "ok")
    (_, _, _, message) = registry.unpublished(w.db)[0]
    s = cose.verify1(message)
    assert s.typ == cose.TYP_ATTESTATION and s.public_key == mb.identity(mb.SEED_B).public_key
    m = cbor2.loads(s.payload)
    ids = [hashlib.sha256(b.payload).digest() for b in chain.built]
    assert m == {1: mb.identity(mb.SEED_B).did, 2: dev.did, 3: START, 4: START + EPOCH, 5: 60,
                 6: 30, 7: 3, 8: "ok", 9: 0.45, 10: merkle.root(ids)}  # fmt: skip
    # Signed once, whoever asks again.
    assert w.tick(now=START + EPOCH + 2) == 0


def test_cli_register_devices_report_and_a_proof_from_the_store(tmp_path: Path) -> None:
    cfg = tmp_path / "attestor.toml"
    cfg.write_text('[attestor]\nstore = "attestor.db"\nepoch = "1 h"\ngrace = "0 s"\n')
    chain = mb.Chain()

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "gateway", "attestor", *args, "-c", str(cfg)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    out = cli("register", chain.ident.device_id, "--name", "balcony")
    assert out.returncode == 0 and f"registered {chain.ident.did}" in out.stdout
    w = _worker(str(tmp_path / "attestor.db"), tmp_path)
    # As if registered before the test batches were sealed (epochs start at registration).
    w.db.execute("UPDATE devices SET registered = ?", (START,))
    for b in chain.take(3):
        assert w.handle("t", b.message).kind == "valid"
    w.tick(now=START + EPOCH + 1)
    devices = json.loads(cli("devices", "--format", "json").stdout)
    assert [(d["name"], d["batches"], d["last_seq"]) for d in devices] == [("balcony", 3, 2)]
    report = cli("report", "--format", "csv", "--epoch", "2026-01-01T00:30:00Z").stdout
    assert report.splitlines()[0].startswith("epoch,name,did,expected,verified")
    assert "2026-01-01T00:00:00Z,balcony" in report
    exported = tmp_path / "batch-1.cbor"
    assert (
        cli("batch", "--device", chain.ident.did, "--seq", "1", "-o", str(exported)).returncode == 0
    )
    assert exported.read_bytes() == chain.built[1].message
    proof = tmp_path / "proof.json"
    made = subprocess.run(
        [sys.executable, "-m", "gateway", "prove", str(exported), "--index", "2", "-o", str(proof)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    checked = subprocess.run(
        [sys.executable, "-m", "gateway", "verify-proof", str(proof)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert checked.returncode == 0 and "signed by the device: yes" in checked.stdout
    missing = cli("batch", "--device", chain.ident.did, "--seq", "9", "-o", str(exported))
    assert missing.returncode != 0 and "no batch 9" in missing.stderr


def test_a_gap_the_device_stated_lost_carries_its_reason(store: str, tmp_path: Path) -> None:
    """Spec v1.1 loss receipts (tests/vectors/loss.json): the attestor, like `verify`, names the
    device's stated reason of a gap, and the batch is accepted as a gap, never an equivocation."""
    w = _worker(store, tmp_path)
    folder = Path(__file__).parents[1] / "vectors" / "loss"
    messages = [(folder / f"chain-{i}.cbor").read_bytes() for i in range(3)]
    after = (folder / "rolled-back-6.cbor").read_bytes()
    did = cbor2.loads(cbor2.loads(messages[0]).value[2])[1]
    registry.register(w.db, did, "balcony")
    assert [w.handle("t", m).kind for m in messages] == ["valid"] * 3
    found = w.handle("t", after)
    assert found.kind == "gap"
    assert "spool-rolled-back (stated by the device)" in found.detail
    assert "3-5" in found.detail
