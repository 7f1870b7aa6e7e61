"""Model updates over MQTT: a bundle signed by a trusted key is applied without a restart; an
unsigned, wrongly signed or sha-mismatched one is rejected and the old model keeps judging.

The second model (tests/vectors/model-update) flags nearly every temperature window, the shipped
one none of the simulated sensor's, so which model judged a reading shows in its flags.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.config import settings as config
from gateway.core.errors import ConfigError
from gateway.device.daemon import Gateway
from gateway.models.bundle import Mode, make_bundle
from gateway.models.store import Installed, ModelStore, Outcome
from gateway.modules.tflite import TFLiteModule, read_manifest
from gateway.wire import cose, dcbor, identity, payloads
from gateway.wire.identity import Identity
from tests.brokers import Mosquitto
from tests.collector import Collector, assert_unbroken_chain, unique_batches
from tests.gatewayproc import GatewayProcess, write_model_config
from tests.received import all_arrived, received_readings

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "models" / "temperature-ae.json"
STRICT = ROOT / "tests" / "vectors" / "model-update" / "temperature-ae.json"
OPERATOR = Identity.from_private_key(Ed25519PrivateKey.generate())
STRANGER = Identity.from_private_key(Ed25519PrivateKey.generate())
OLD_SHA = read_manifest(SHIPPED)[0].sha256
NEW_SHA = read_manifest(STRICT)[0].sha256


#: the device the store tests play: the id of a device key, as bundles name their targets
DEVICE = Identity.from_private_key(Ed25519PrivateKey.generate()).device_id


def _bundle(
    signer: Identity,
    manifest: Path,
    *,
    release: int,
    mode: Mode = "active",
    targets: tuple[str, ...] = (DEVICE,),
    now: float | None = None,
) -> bytes:
    return make_bundle(signer, manifest, targets=targets, release=release, mode=mode, now=now)


def _receive(store: ModelStore, message: bytes, **kw: Any) -> tuple[Outcome, Installed | None]:
    return store.receive(message, _trial, device_id=DEVICE, **kw)


def _trial(manifest: Path) -> None:
    TFLiteModule(module_id="trial", options={"model": str(manifest)})


def _resign(message: bytes, signer: Identity = OPERATOR, **changes: Any) -> bytes:
    """The bundle's payload with keys changed (k5=..., k6=...), signed by `signer`."""
    p = cbor2.loads(cose.verify1(message).payload)
    for key, value in changes.items():
        p[int(key[1:])] = value
    return cose.sign1(signer, cose.TYP_MODEL, dcbor.dumps(p))


def _unsigned(message: bytes) -> bytes:
    """The same payload with an all-zero signature: what an unsigned bundle looks like."""
    protected = cose.protected_header(OPERATOR.kid, cose.TYP_MODEL)
    return cbor2.dumps(cbor2.CBORTag(18, [protected, {}, cose.verify1(message).payload, bytes(64)]))


# --------------------------------------------------------------------------- the store's policy


def test_store_applies_refuses_and_remembers(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", [OPERATOR.did])
    new = _bundle(OPERATOR, STRICT, release=2, now=2_000)
    for bad, kind in [
        (b"\x00garbage", "malformed"),
        (_unsigned(new), "bad-signature"),
        (_bundle(STRANGER, STRICT, release=2, now=2_000), "untrusted-signer"),
        (_resign(new, k5=bytes(32)), "sha-mismatch"),
        (_bundle(OPERATOR, STRICT, release=2, targets=("someone-else",)), "not-for-this-device"),
    ]:
        outcome, inst = _receive(store, bad, now=1.0)
        assert (outcome.result, outcome.kind, inst) == ("rejected", kind, None), outcome
    assert not (tmp_path / "models" / "active").exists()

    outcome, inst = _receive(store, new)
    assert outcome.result == "applied" and inst is not None
    assert outcome.to_dict()["sha256"] == NEW_SHA and outcome.signer == OPERATOR.did
    assert read_manifest(inst.manifest)[0].sha256 == NEW_SHA
    # The same bundle again (a retained message after a reconnect) changes nothing.
    assert _receive(store, new)[0].result == "unchanged"
    # A replayed older bundle cannot push the previous model back.
    old = _bundle(OPERATOR, SHIPPED, release=1, now=1_000)
    outcome, _ = _receive(store, old)
    assert (outcome.result, outcome.kind) == ("rejected", "stale")
    assert "release 1 of temperature-ae is not above release 2" in outcome.reason

    again = ModelStore(tmp_path / "models", [OPERATOR.did])
    again.load()
    assert again.installed["active"]["temperature-ae"].sha256 == NEW_SHA
    # Taking the signer off the list withdraws what it installed.
    withdrawn = ModelStore(tmp_path / "models", [STRANGER.did])
    withdrawn.load()
    assert withdrawn.installed["active"] == {}


def test_a_trusted_bundle_the_interpreter_refuses_installs_nothing(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    model = b"TFL3" + bytes(300)  # the right sha256, but no model
    doc = json.loads(STRICT.read_text())
    doc["sha256"] = __import__("hashlib").sha256(model).hexdigest()
    (broken / "temperature-ae.tflite").write_bytes(model)
    (broken / "temperature-ae.json").write_text(json.dumps(doc))
    pair = tmp_path / "pair"
    shutil.copytree(broken, pair)
    # make_bundle checks the manifest, not the interpreter: it signs this.
    message = _bundle(OPERATOR, pair / "temperature-ae.json", release=1)
    store = ModelStore(tmp_path / "models", [OPERATOR.did])
    outcome, inst = _receive(store, message)
    assert (outcome.result, outcome.kind, inst) == ("rejected", "model-refused", None)
    assert not (tmp_path / "models" / "active" / "temperature-ae.json").exists()
    assert [p.name for p in (tmp_path / "models").iterdir()] == []  # no staging left behind


def test_shadow_then_promotion(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", [OPERATOR.did])
    shadow = _bundle(OPERATOR, STRICT, mode="shadow", release=1)
    outcome, inst = _receive(store, shadow)
    assert outcome.result == "shadow" and inst is not None and inst.mode == "shadow"
    assert store.installed["active"] == {}
    # Promotion is a new release: the shadow's own number is taken.
    outcome, _ = _receive(store, _bundle(OPERATOR, STRICT, mode="active", release=1))
    assert (outcome.result, outcome.kind) == ("rejected", "stale")
    outcome, _ = _receive(store, _bundle(OPERATOR, STRICT, mode="active", release=2))
    assert outcome.result == "applied"
    assert store.installed["shadow"] == {}
    assert not (tmp_path / "models" / "shadow" / "temperature-ae.bundle").exists()
    # The shadow bundle replayed after its promotion, before and after a restart: refused.
    outcome, _ = _receive(store, shadow)
    assert (outcome.result, outcome.kind) == ("rejected", "stale")
    again = ModelStore(tmp_path / "models", [OPERATOR.did])
    again.load()
    outcome, _ = _receive(again, shadow)
    assert (outcome.result, outcome.kind) == ("rejected", "stale")
    assert again.installed["shadow"] == {}


def test_the_highest_release_outlives_the_bundles(tmp_path: Path) -> None:
    """accepted.json keeps the highest release of each name even when no bundle of it is left
    (its signer withdrawn, its files removed): a replay after a restart is still refused."""
    store = ModelStore(tmp_path / "models", [OPERATOR.did])
    assert _receive(store, _bundle(OPERATOR, STRICT, release=7))[0].result == "applied"
    shutil.rmtree(tmp_path / "models" / "active")
    again = ModelStore(tmp_path / "models", [OPERATOR.did])
    again.load()
    assert again.installed["active"] == {} and again.highest("temperature-ae") == 7
    outcome, _ = _receive(again, _bundle(OPERATOR, SHIPPED, release=6))
    assert (outcome.result, outcome.kind) == ("rejected", "stale")
    assert _receive(again, _bundle(OPERATOR, SHIPPED, release=8))[0].result == "applied"
    assert json.loads((tmp_path / "models" / "accepted.json").read_text()) == {"temperature-ae": 8}


def test_a_bundle_for_the_fleet_is_taken_by_its_members_only(tmp_path: Path) -> None:
    member = ModelStore(tmp_path / "a", [OPERATOR.did], fleet="north")
    outsider = ModelStore(tmp_path / "b", [OPERATOR.did], fleet="south")
    loner = ModelStore(tmp_path / "c", [OPERATOR.did])
    message = _bundle(OPERATOR, STRICT, release=1, targets=("fleet:north", "other-device"))
    assert _receive(member, message)[0].result == "applied"
    for store in (outsider, loner):
        outcome, inst = _receive(store, message)
        assert (outcome.result, outcome.kind, inst) == ("rejected", "not-for-this-device", None)
        assert "fleet:north, other-device" in outcome.reason


def test_an_old_format_bundle_is_refused_with_its_reason(tmp_path: Path) -> None:
    """The first format (no targets, no release) is what can be replayed anywhere."""
    p = cbor2.loads(cose.verify1(_bundle(OPERATOR, STRICT, release=1)).payload)
    del p[8], p[9]
    old = cose.sign1(OPERATOR, cose.TYP_MODEL, dcbor.dumps(p))
    store = ModelStore(tmp_path / "models", [OPERATOR.did])
    outcome, inst = _receive(store, old)
    assert (outcome.result, outcome.kind, inst) == ("rejected", "old-format", None)
    assert "--release" in outcome.reason


def test_no_trusted_signers_means_no_updates(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models", [])
    assert not store.enabled
    outcome, inst = _receive(store, _bundle(OPERATOR, STRICT, release=1))
    assert (outcome.result, outcome.kind, inst) == ("rejected", "untrusted-signer", None)


def test_a_signer_that_is_not_a_did_key_names_its_line(tmp_path: Path) -> None:
    text = config.sample_text() + '\n[models]\ntrusted_model_signers = ["did:key:z6Mk-nope"]\n'
    with pytest.raises(ConfigError) as info:
        config.loads(text)
    line = text.splitlines().index('trusted_model_signers = ["did:key:z6Mk-nope"]') + 1
    assert f":{line}: models.trusted_model_signers: item 0" in str(info.value)


# --------------------------------------------------------------------------- over a real broker


def _write_config(workdir: Path, port: int) -> Path:
    return write_model_config(workdir, port, OPERATOR.did, name="model-update-test")


def _results(collector: Collector) -> list[dict[str, Any]]:
    return [
        json.loads(m.payload)
        for m in collector.messages
        if m.topic.endswith("/model/result") and m.payload
    ]


def _model_of(batch: payloads.Batch) -> str:
    (entry,) = [m for m in batch.modules if m[0] == "tflite"]
    return bytes(entry[2]).hex()


def _temperature_flags(batch: payloads.Batch) -> list[bool]:
    return ["model" in r.get(payloads.FLAGS, []) for r in _temperatures(batch)]


def _temperatures(batch: payloads.Batch) -> list[dict[Any, Any]]:
    return [r for r in batch.records if str(r[payloads.N]).endswith("/temperature")]


def test_update_over_mqtt_is_applied_live_and_bad_ones_are_rejected(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    cfg = _write_config(tmp_path / "gw", mosquitto.port)
    device = identity.load(tmp_path / "gw" / "device.key").device_id
    topic = f"depin/v1/{device}/model"
    collector = Collector(mosquitto.port)
    gw = GatewayProcess(cfg, tmp_path / "gw.log")
    good = make_bundle(OPERATOR, STRICT, targets=[device], release=1)
    rejected = [
        (b"not a bundle at all", "malformed"),
        (_unsigned(good), "bad-signature"),
        (make_bundle(STRANGER, STRICT, targets=[device], release=1), "untrusted-signer"),
        (_resign(good, k5=bytes(32)), "sha-mismatch"),
    ]

    def n_results(n: int) -> Callable[[], bool]:
        return lambda: len(_results(collector)) >= n

    def batches_after(t: float) -> Callable[[], bool]:
        return lambda: any(b.sealed > t for _, _, b in unique_batches(collector.batches()))

    try:
        gw.start()
        assert gw.wait_log("connected to", 20)
        for n, (message, _) in enumerate(rejected, 1):
            collector.client.publish(topic, message, qos=1)
            assert collector.wait_for(n_results(n), 15), gw.log.read_text()[-3000:]
        t_rejected = time.time()
        assert collector.wait_for(batches_after(t_rejected + 2.0), 15)
        collector.client.publish(topic, good, qos=1, retain=True)
        assert collector.wait_for(n_results(len(rejected) + 1), 15)
        t_applied = time.time()
        assert collector.wait_for(batches_after(t_applied + 1.0), 15)
        # A restart keeps the update; the retained bundle comes again and changes nothing.
        assert gw.terminate() == 0
        gw.start()
        assert collector.wait_for(n_results(len(rejected) + 2), 20)
        assert collector.wait_for(batches_after(time.time() + 2.0), 15)
        assert gw.terminate() == 0
        durable = gw.durable()

        assert collector.wait_for(lambda: all_arrived(collector, durable), 20)
    finally:
        collector.client.publish(topic, b"", qos=1, retain=True)  # clear the retained bundle
        collector.close()
        if gw.running():
            gw.kill()

    results = _results(collector)
    assert [(r["result"], r.get("kind")) for r in results[: len(rejected)]] == [
        ("rejected", kind) for _, kind in rejected
    ]
    assert results[len(rejected)]["result"] == "applied"
    assert results[len(rejected)]["sha256"] == NEW_SHA
    assert results[len(rejected) + 1]["result"] == "unchanged"

    batches = sorted(unique_batches(collector.batches()), key=lambda x: x[0])
    assert_unbroken_chain(batches)
    assert max(received_readings(batches).values()) == 1  # nothing stored twice
    models = [_model_of(b) for _, _, b in batches]
    # One switch, in seq order, from the shipped model to the update: never back.
    switch = models.index(NEW_SHA)
    assert set(models[:switch]) == {OLD_SHA} and set(models[switch:]) == {NEW_SHA}
    # The old model kept judging through every rejection: not one temperature flagged...
    before = [f for _, _, b in batches[:switch] for f in _temperature_flags(b)]
    assert len(before) > 50 and not any(before)
    assert any(b.sealed > t_rejected + 2.0 for _, _, b in batches[:switch])
    # (it was judging: once its window of 24 had filled, every reading got its score)
    scores = [r[payloads.SCORE] for _, _, b in batches[:switch] for r in _temperatures(b)]
    assert all(s > 0 for s in scores[24:])
    # ... and the readings the new one judged carry its verdicts: from its first batch on (the
    # windows carried over: no warm-up), and after the restart once a window has filled.
    first_boot = batches[0][2].boot
    live = [
        f for _, _, b in batches[switch:] if b.boot == first_boot for f in _temperature_flags(b)
    ]
    restarted = [f for _, _, b in batches if b.boot != first_boot for f in _temperature_flags(b)]
    assert len(live) > 15 and all(live)
    assert len(restarted) > 40 and sum(restarted[24:]) >= 0.95 * len(restarted[24:])
    log = gw.log.read_text()
    assert "model update applied: temperature-ae 1.1.0-strict is now active" in log
    assert "model update rejected (untrusted-signer)" in log


# --------------------------------------------------------------------------- shadow mode


async def _with_gateway(gw: Gateway, body: Callable[[], Awaitable[None]]) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(gw.run(stop))
    try:
        await body()
    finally:
        stop.set()
        await task


def test_shadow_model_scores_go_to_health_not_batches(tmp_path: Path, mosquitto: Mosquitto) -> None:
    cfg = config.load(_write_config(tmp_path / "gw", mosquitto.port))
    ident = identity.load(cfg.device.key_file)
    topic = f"depin/v1/{ident.device_id}/model"
    collector = Collector(mosquitto.port)
    shadow = make_bundle(OPERATOR, STRICT, mode="shadow", targets=[ident.device_id], release=1)
    promotion = make_bundle(OPERATOR, STRICT, mode="active", targets=[ident.device_id], release=2)

    async def wait(pred: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, "timed out"
            await asyncio.sleep(0.05)

    async def body() -> None:
        # Past the active model's warm-up (24 temperatures), the shadow starts with its windows.
        await wait(lambda: gw.health.connected and gw.health.readings >= 80, 15)
        collector.client.publish(topic, shadow, qos=1)
        await wait(lambda: gw.health.model_updates["shadow"] == 1, 15)
        await wait(lambda: gw.health.shadow["temperature-ae"]["judged"] >= 60, 15)
        snap = gw.health.snapshot()["shadow"]["temperature-ae"]
        assert snap["sha256"] == NEW_SHA and snap["version"] == "1.1.0-strict"
        # It disagrees with the active model on nearly every reading: that is what the
        # operator reads before promoting it.
        assert snap["only_shadow"] >= 0.9 * snap["judged"] and snap["only_active"] == 0
        assert snap["mean_score"] > 0.9
        collector.client.publish(topic, promotion, qos=1)
        await wait(lambda: gw.health.model_updates["applied"] == 1, 15)
        assert gw.health.shadow == {}
        assert gw.health.models["temperature-ae"]["source"] == "update"
        t = time.time()
        await wait(
            lambda: any(b.sealed > t + 0.5 for _, _, b in unique_batches(collector.batches())), 15
        )

    gw = Gateway(cfg, ident=ident)
    try:
        asyncio.run(_with_gateway(gw, body))
    finally:
        collector.close()
    batches = sorted(unique_batches(collector.batches()), key=lambda x: x[0])
    models = [_model_of(b) for _, _, b in batches]
    switch = models.index(NEW_SHA)
    # While it ran in shadow mode its verdicts never reached a batch.
    assert not any(f for _, _, b in batches[:switch] for f in _temperature_flags(b))
    assert all(len(b.modules) == 1 for _, _, b in batches)  # shadows are not named
    assert any(f for _, _, b in batches[switch:] for f in _temperature_flags(b))


def test_a_half_installed_update_is_not_run_after_a_power_cut(tmp_path: Path) -> None:
    """A cut between the install's two renames leaves the new model under the old manifest:
    at the next start that pair is not used (the configured model runs), and sending the bundle
    again completes the install."""
    store = ModelStore(tmp_path / "models", [OPERATOR.did])
    assert _receive(store, _bundle(OPERATOR, SHIPPED, release=1))[0].result == "applied"
    newer = _bundle(OPERATOR, STRICT, release=2)
    # What the first rename of installing `newer` leaves: its model beside the old manifest.
    active = tmp_path / "models" / "active"
    (active / "temperature-ae.tflite").write_bytes(STRICT.with_suffix(".tflite").read_bytes())
    after = ModelStore(tmp_path / "models", [OPERATOR.did])
    after.load()
    assert after.installed["active"] == {}
    assert _receive(after, newer)[0].result == "applied"
    assert read_manifest(active / "temperature-ae.json")[0].sha256 == NEW_SHA
