"""`depin-gateway attestor report`: each epoch's factors beside its score, and in words which of
them cost, so that a score of 0.0 explains itself. Against SQLite and PostgreSQL alike."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.attestor import registry
from gateway.attestor.config import loads
from gateway.attestor.service import Worker
from gateway.wire import cose, payloads
from gateway.wire.identity import Identity
from gateway.wire.score import explain, score
from tests import make_batches as mb

EPOCH = 3600
START = mb.SEALED - mb.SEALED % EPOCH  # the epoch the test batches are sealed in
RECEIVED = float(mb.SEALED)  # when the attestor got the batches (the handler's `now`)


def _config(store: str, tmp_path: Path) -> Path:
    cfg = tmp_path / "attestor.toml"
    cfg.write_text(
        f'[attestor]\nstore = "{store}"\nepoch = "1 h"\ngrace = "0 s"\n'
        '[broker]\nurl = "mqtt://127.0.0.1:1"\n'
    )
    return cfg


def _worker(cfg: Path) -> Worker:
    return Worker(loads(cfg.read_text(), base_dir=cfg.parent), mb.identity(mb.SEED_B))


def _birth(ident: Identity) -> bytes:
    """Born at the epoch's start: 2 quantities every 60 s, so 120 readings expected."""
    payload = payloads.encode_birth(
        did=ident.did,
        version="test",
        boot=mb.BOOT,
        started=START,
        config_sha256=bytes(32),
        sensors=[{"id": "climate", "driver": "bme280", "quantities": ["temperature", "humidity"],
                  "interval": 60.0}],
        modules=mb.MODULES,
        next_seq=0,
    )  # fmt: skip
    return cose.sign1(ident, cose.TYP_BIRTH, payload)


class _Device:
    """An honest device whose batches say whether its clock was synced."""

    def __init__(self) -> None:
        self.ident = mb.identity()
        self.prev = payloads.ZERO_PREV
        self.seq = 0

    def batch(self, *, synced: bool, n: int = 12) -> bytes:
        payload = mb.batch_payload(self.ident, self.seq, self.prev, mb.records(n), synced=synced)
        self.prev, self.seq = mb.batch_id(payload), self.seq + 1
        return mb.sign(self.ident, payload)


def _report(cfg: Path, fmt: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "gateway", "attestor", "report", "--format", fmt, "-c", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_zero_score_says_the_clock_was_not_synced(store: str, tmp_path: Path) -> None:
    cfg = _config(store, tmp_path)
    w = _worker(cfg)
    dev = _Device()
    registry.register(w.db, dev.ident.did, "balcony", now=START)
    assert w.handle("t", _birth(dev.ident), now=RECEIVED).kind == "birth"
    for i in range(9):  # 108 readings, all read while the clock was not synced
        assert w.handle("t", dev.batch(synced=False), now=RECEIVED + i).kind == "valid"
    assert w.tick(now=START + EPOCH + 1) == 1

    (row,) = json.loads(_report(cfg, "json"))
    assert (row["expected"], row["verified"], row["flagged"], row["synced"]) == (120, 108, 0, 0)
    assert (row["status"], row["score"]) == ("ok", 0.0)
    assert row["why"] == [
        "108 of 120 expected readings verified",
        "clock not synced: 0 of 108 readings synced",
    ]
    row_why = "; ".join(row["why"])

    (line,) = csv.DictReader(io.StringIO(_report(cfg, "csv")))
    assert line["synced"] == "0" and line["score"] == "0.0"
    assert line["why"] == row_why

    header, body = _report(cfg, "table").splitlines()
    table = dict(zip(header.split(), re.split(r"\s{2,}", body), strict=True))
    shown = ("expected", "verified", "flagged", "synced", "status", "score")
    assert [table[k] for k in shown] == ["120", "108", "0", "0", "ok", "0.0"]
    assert table["why"] == row_why


def test_the_synced_figure_is_the_one_scored_not_what_came_later(
    store: str, tmp_path: Path
) -> None:
    """Batches of an epoch that arrive after it was scored are kept but do not change its
    attestation; the report's factors stay those of the attestation."""
    cfg = _config(store, tmp_path)
    w = _worker(cfg)
    dev = _Device()
    registry.register(w.db, dev.ident.did, "balcony", now=START)
    w.handle("t", _birth(dev.ident), now=RECEIVED)
    synced = [dev.batch(synced=True) for _ in range(4)]  # seq 0-3
    unsynced = [dev.batch(synced=False) for _ in range(3)]  # seq 4-6
    # seq 0-2 and 4 arrive in time (3 is held up on the way); 3, 5 and 6 after the scoring
    for i, message in enumerate([*synced[:3], unsynced[0]]):
        w.handle("t", message, now=RECEIVED + i)
    assert w.tick(now=START + EPOCH + 1) == 1
    for i, message in enumerate([synced[3], *unsynced[1:]]):
        w.handle("t", message, now=START + EPOCH + 10 + i)

    (row,) = json.loads(_report(cfg, "json"))
    # 3 synced batches and 1 unsynced of 12 readings each were scored
    assert (row["verified"], row["synced"], row["status"]) == (48, 36, "gap")
    assert row["score"] == score(120, 48, 36, 0, "gap") == 0.3
    assert row["why"] == [
        "48 of 120 expected readings verified",
        "clock not synced for 12 of 48 readings",
    ]


def test_nothing_expected_without_a_birth(store: str, tmp_path: Path) -> None:
    cfg = _config(store, tmp_path)
    w = _worker(cfg)
    dev = _Device()
    registry.register(w.db, dev.ident.did, "balcony", now=START)
    w.handle("t", dev.batch(synced=True), now=RECEIVED)
    w.tick(now=START + EPOCH + 1)
    (row,) = json.loads(_report(cfg, "json"))
    assert (row["expected"], row["verified"], row["synced"], row["score"]) == (0, 12, 12, 0.0)
    assert row["why"] == ["nothing expected: no birth message announced the sensors"]


@pytest.mark.parametrize(
    ("factors", "why"),
    [
        ((120, 120, 0, "ok", 1.0, 120), []),
        ((120, 120, 0, "gap", 1.0, None), []),
        ((120, 0, 0, "ok", 0.0, 0), ["0 of 120 expected readings verified"]),
        ((120, 120, 30, "ok", 0.75, 120), ["30 of 120 readings flagged"]),
        ((120, 120, 120, "ok", 0.0, 120), ["120 of 120 readings flagged"]),
        (
            (120, 120, 0, "replay", 0.5, 120),
            ["chain: replayed or mislinked batches (score halved)"],
        ),
        (
            (120, 120, 0, "equivocation", 0.0, 120),
            ["chain: equivocation, two batches signed for one seq (score 0)"],
        ),
        # the signed attestation has no `synced`: the clock factor is worked back from the score
        (
            (120, 108, 0, "ok", 0.0, None),
            [
                "108 of 120 expected readings verified",
                "clock not synced: 0 of 108 readings synced",
            ],
        ),
        (
            (120, 120, 12, "ok", score(120, 120, 60, 12, "ok"), None),
            [
                "12 of 120 readings flagged",
                "clock not synced for about 60 of 120 readings",
            ],
        ),
        # an equivocation hides the clock (its factor 0 leaves nothing to work back from)
        (
            (120, 120, 0, "equivocation", 0.0, None),
            [
                "chain: equivocation, two batches signed for one seq (score 0)",
            ],
        ),
    ],
)
def test_explain(factors: tuple[int, int, int, str, float, int | None], why: list[str]) -> None:
    expected, verified, flagged, status, value, synced = factors
    assert explain(expected, verified, flagged, status, value, synced) == why
