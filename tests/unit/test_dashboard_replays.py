"""The dashboard model against replays and strangers on a device's topics: a message taken
once is not verified again, a batch counts once and plots at most its newest readings, an
older attestation does not replace a newer one, and what the device did not sign stays off
its card."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest

from gateway.dashboard import model
from gateway.dashboard.model import BATCH_READINGS, Fleet
from gateway.wire import cose, dcbor, merkle, payloads, verify
from gateway.wire.identity import Identity
from tests import hostile
from tests import make_batches as mb

P = "depin/v1"
NOW = float(mb.SEALED)
DEV = mb.identity(mb.SEED_A)
ATTESTOR = mb.identity(mb.SEED_B)


def _fleet() -> Fleet:
    fleet = Fleet(P, attestors=[ATTESTOR.did])
    assert fleet.handle(
        f"{P}/{DEV.device_id}/birth", mb.sign(DEV, mb.birth_payload(DEV), cose.TYP_BIRTH), NOW
    )
    return fleet


def _attestation(
    score: float, revision: int = 0, epoch: float = mb.SEALED, signer: Identity = ATTESTOR
) -> bytes:
    doc: dict[int, Any] = {
        1: signer.did,
        2: DEV.did,
        3: epoch,
        4: epoch + 3600,
        5: 360,
        6: 355,
        7: 2,
        8: "ok",
        9: score,
        10: merkle.root([]),
    }
    if revision:
        doc[11] = revision
    return mb.sign(signer, dcbor.dumps(doc), cose.TYP_ATTESTATION)


def test_a_repeated_message_is_not_verified_again(monkeypatch: pytest.MonkeyPatch) -> None:
    fleet = _fleet()
    calls: list[str] = []
    examine = verify.examine

    def counting(message: bytes, source: str = "") -> Any:
        calls.append(source)
        return examine(message, source)

    monkeypatch.setattr(model, "examine", counting)
    b = mb.Chain(DEV).next()
    for _ in range(5):
        fleet.handle(f"{P}/{DEV.device_id}/batch", b.message, NOW)
    assert len(calls) == 1
    # on another topic the same bytes are not verified either
    fleet.handle(f"{P}/{ATTESTOR.device_id}/batch", b.message, NOW)
    assert len(calls) == 1
    assert fleet.intake()["refused"]["batch: repeated"] == 5
    assert fleet.detail(DEV.device_id)["chain"]["batches"] == 1  # type: ignore[index]


def test_a_batch_counts_once_in_any_envelope() -> None:
    fleet = _fleet()
    b = mb.Chain(DEV).next()
    fleet.handle(f"{P}/{DEV.device_id}/batch", b.message, NOW)
    # the same signed payload in an envelope of other bytes (a different unprotected header)
    tagged = cbor2.loads(b.message)
    protected, _, payload, sig = tagged.value
    again = cbor2.dumps(cbor2.CBORTag(18, [protected, {4: b"x"}, payload, sig]))
    assert again != b.message
    fleet.handle(f"{P}/{DEV.device_id}/batch", again, NOW)
    chain = fleet.detail(DEV.device_id)["chain"]  # type: ignore[index]
    assert chain["batches"] == 1 and chain["rejected"] == 0


def test_a_batch_plots_only_its_newest_readings_per_quantity() -> None:
    fleet = Fleet(P, points=100_000)  # one point per reading: the cap, not the buckets, binds
    n = BATCH_READINGS + 500
    recs = [
        payloads.encode_record("climate/temperature", "Cel", float(i), NOW - n + i, 1.0, [])
        for i in range(n)
    ] + [payloads.encode_record("climate/humidity", "%RH", 40.0, NOW - 5, 1.0, [])]
    b = mb.Chain(DEV).next(recs)
    assert fleet.handle(f"{P}/{DEV.device_id}/batch", b.message, NOW)
    series = fleet.detail(DEV.device_id)["series"]  # type: ignore[index]
    temps = series["climate/temperature"]["points"]
    assert len(temps) == BATCH_READINGS
    assert [p[1] for p in temps] == [float(i) for i in range(n - BATCH_READINGS, n)]
    assert len(series["climate/humidity"]["points"]) == 1
    latest = fleet.detail(DEV.device_id)["latest"]  # type: ignore[index]
    assert latest["climate/temperature"]["v"] == float(n - 1)


def test_a_superseded_attestation_does_not_replace_the_newer() -> None:
    fleet = _fleet()
    topic = f"{P}/{DEV.device_id}/attestation"
    fleet.handle(topic, _attestation(1.0, revision=1), NOW)
    fleet.handle(topic, _attestation(0.5, revision=0), NOW)  # revision 0, republished
    att = fleet.detail(DEV.device_id)["attestation"]  # type: ignore[index]
    assert att["verified"] is True and att["score"] == 1.0
    # an earlier epoch does not replace it either; a later one does
    fleet.handle(topic, _attestation(0.25, revision=3, epoch=mb.SEALED - 3600), NOW)
    assert fleet.detail(DEV.device_id)["attestation"]["score"] == 1.0  # type: ignore[index]
    assert fleet.intake()["refused"]["attestation: superseded"] == 2
    fleet.handle(topic, _attestation(0.75, epoch=mb.SEALED + 3600), NOW)
    assert fleet.detail(DEV.device_id)["attestation"]["score"] == 0.75  # type: ignore[index]


def test_a_strangers_attestation_does_not_hide_a_verified_one() -> None:
    fleet = _fleet()
    topic = f"{P}/{DEV.device_id}/attestation"
    fleet.handle(topic, _attestation(1.0), NOW)
    fleet.handle(topic, _attestation(0.1, epoch=mb.SEALED + 7200, signer=hostile.throwaway()), NOW)
    att = fleet.detail(DEV.device_id)["attestation"]  # type: ignore[index]
    assert att["verified"] is True and att["score"] == 1.0
    assert sum(v for k, v in fleet.intake()["refused"].items() if "not trusted" in k) == 1


def _junk(ident: Identity) -> bytes:
    return hostile.signed(b"\xa1\x01\x02", cose.TYP_BATCH, ident)


def test_a_strangers_messages_stay_off_the_devices_card() -> None:
    fleet = _fleet()
    d = DEV.device_id
    b = mb.Chain(DEV).next()
    for _ in range(1000):
        fleet.handle(f"{P}/{d}/batch", b.message, NOW)
    fleet.handle(f"{P}/{d}/batch", _junk(hostile.throwaway()), NOW)
    fleet.handle(
        f"{P}/{d}/birth", mb.sign(ATTESTOR, mb.birth_payload(ATTESTOR), cose.TYP_BIRTH), NOW
    )
    chain = fleet.detail(d)["chain"]  # type: ignore[index]
    assert chain["batches"] == 1 and chain["rejected"] == 0 and chain["problem"] is None
    refused = fleet.intake()["refused"]
    assert refused["batch: repeated"] == 999
    assert refused["batch: not signed by its device"] == 1
    assert refused["birth: not signed by its device"] == 1
    # what the device itself signed wrong is still its own: on its card
    fleet.handle(f"{P}/{d}/batch", _junk(DEV), NOW)
    chain = fleet.detail(d)["chain"]  # type: ignore[index]
    assert chain["rejected"] == 1 and chain["problem"].startswith("malformed")
