"""A gateway that anyone on the broker can publish to: retained junk on its own topics, CBOR bombs
signed by throwaway keys, a flood of 16 MiB bundles by a stranger, model bundles for another
device, downgrades, a shadow bundle replayed after its promotion, attestations by a key nobody
configured. The real gateway process over a real mosquitto; for each, it stays up, keeps
publishing honest batches that verify, counts what it refused in health's `ignored_messages`,
takes nothing untrusted into its health or its installed models, and stays under the memory its
systemd unit gives it (MemoryMax=256M).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.models.bundle import make_bundle
from gateway.modules.tflite import read_manifest
from gateway.wire import cose, dcbor, identity, limits, merkle
from gateway.wire.identity import Identity
from gateway.wire.verify import LINKED, Verifier
from tests import hostile
from tests.brokers import Mosquitto
from tests.collector import Collector
from tests.gatewayproc import GatewayProcess, write_model_config

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "models" / "temperature-ae.json"
STRICT = ROOT / "tests" / "vectors" / "model-update" / "temperature-ae.json"
NEW_SHA = read_manifest(STRICT)[0].sha256
OPERATOR = Identity.from_private_key(Ed25519PrivateKey.generate())
ATTESTOR = Identity.from_private_key(Ed25519PrivateKey.generate())
#: the unit's MemoryMax (packaging/systemd): the kernel kills the gateway above it
MEMORY_MAX = 256 * 1024 * 1024
JUNK = 2 * 1024 * 1024
#: 16 MiB bundles in a row: one held per message would be 480 MiB
FLOOD = 30


def _write_config(workdir: Path, port: int) -> Path:
    monitor = '[monitor]\nstate_interval = "1 s"\nhealth_interval = "1 s"\n'
    monitor += f'attestors = ["{ATTESTOR.did}"]\n'
    return write_model_config(workdir, port, OPERATOR.did, name="hostile-test", extra=monitor)


def _junk(n: int = JUNK) -> bytes:
    """n bytes that decode to about n empty maps: hundreds of megabytes of Python objects."""
    count = n - len(hostile.head(4, n))
    return hostile.head(4, count) + b"\xa0" * count


def _junk_sign1(n: int = JUNK) -> bytes:
    """The same, in the unprotected header of a COSE_Sign1 (the tag and the shape right): what
    gets through a check of the first byte and of the size cap of the model topic."""
    empty, signature = hostile.head(2, 0), hostile.head(2, 64) + bytes(64)
    junk = _junk(n - 20)
    return b"\xd2" + hostile.head(4, 4) + empty + b"\xa1\x01" + junk + empty + signature


def _arrays_sign1(n: int = limits.CAPS["model"]) -> bytes:
    """A COSE_Sign1 under a trusted signer's kid whose payload slot holds about n bytes of empty
    arrays instead of a byte string: millions of Python lists, were it decoded."""
    protected = cose.protected_header(OPERATOR.kid, cose.TYP_MODEL)
    start = b"\xd2\x84" + hostile.head(2, len(protected)) + protected + b"\xa0"
    end = hostile.head(2, 64) + bytes(64)
    count = n - len(start) - len(end) - 9
    return start + hostile.head(4, count) + b"\x80" * count + end


def _large_stranger_bundle() -> bytes:
    """Well formed up to its size cap (16 MiB), signed by a throwaway key."""
    n = limits.CAPS["model"] - 512
    return hostile.signed(hostile.head(2, n) + bytes(n), cose.TYP_MODEL)


def _attestation(signer: Identity, device_did: str, score: float) -> bytes:
    fields = {1: signer.did, 2: device_did, 3: 0, 4: 1, 5: 1, 6: 1, 7: 0, 8: "ok", 9: score,
              10: merkle.root([])}  # fmt: skip
    return cose.sign1(signer, cose.TYP_ATTESTATION, dcbor.dumps(fields))


def _hostile_signed(typ: str) -> list[bytes]:
    """The CBOR bombs of tests/hostile.py as payloads signed by throwaway keys."""
    payloads = [hostile.sharing_bomb(), hostile.self_reference(), hostile.deep_nesting(10_000)]
    payloads += hostile.unknown_tags().values()
    payloads += hostile.huge_lengths().values()
    return [hostile.signed(p, typ) for p in payloads]


def _health(collector: Collector) -> dict[str, Any] | None:
    found = [m for m in collector.messages if m.topic.endswith("/health") and m.payload]
    return json.loads(found[-1].payload) if found else None


def _results(collector: Collector) -> list[dict[str, Any]]:
    return [
        json.loads(m.payload)
        for m in collector.messages
        if m.topic.endswith("/model/result") and m.payload
    ]


def test_a_gateway_under_attack_from_the_broker_stays_up_honest_and_small(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    cfg = _write_config(tmp_path / "gw", mosquitto.port)
    device = identity.load(tmp_path / "gw" / "device.key")
    base = f"depin/v1/{device.device_id}"
    verifier = Verifier(allowed_dids=[device.did])
    collector = Collector(mosquitto.port)
    pub = collector.client.publish
    gw = GatewayProcess(cfg, tmp_path / "gw.log")
    junk_topics = ["attestation", "model", "head"]

    def bundle(
        release: int, mode: str = "active", *, manifest: Path = STRICT, to: str = ""
    ) -> bytes:
        return make_bundle(
            OPERATOR,
            manifest,
            targets=[to or device.device_id],
            release=release,
            mode="shadow" if mode == "shadow" else "active",
        )

    def n_results(n: int) -> bool:
        return len(_results(collector)) >= n

    verified: list[str] = []  # the kind of each batch message, checked once in arrival order

    def verified_batches() -> int:
        batches = [m.payload for m in collector.messages if m.topic == f"{base}/batch"]
        verified.extend(verifier.check(m).kind for m in batches[len(verified) :])
        return sum(1 for kind in verified if kind in LINKED)

    def more_batches(than: int, by: int = 3) -> bool:
        assert gw.running(), gw.log.read_text()[-3000:]
        return verified_batches() >= than + by

    def health_shows(pred: Any) -> bool:
        assert gw.running(), gw.log.read_text()[-3000:]
        h = _health(collector)
        return h is not None and bool(pred(h))

    try:
        # Retained junk on its own topics before it starts: it reads all of it at every start.
        for kind in ("attestation", "head"):
            pub(f"{base}/{kind}", _junk(), qos=1, retain=True).wait_for_publish(10)
        pub(f"{base}/model", _arrays_sign1(), qos=1, retain=True).wait_for_publish(30)
        pub("homeassistant/status", _junk(), qos=1, retain=True).wait_for_publish(10)
        gw.start()
        assert gw.wait_log("connected to", 20), gw.log.read_text()[-3000:]
        assert collector.wait_for(lambda: more_batches(0), 20)
        assert collector.wait_for(
            lambda: health_shows(
                lambda h: all(h["ignored_messages"].get(k, 0) >= 1 for k in junk_topics)
            ),
            15,
        ), _health(collector)
        # The junk on the model topic was judged (under the cap for bundles) and refused.
        assert collector.wait_for(lambda: n_results(1), 15)
        for kind in junk_topics:
            pub(f"{base}/{kind}", b"", qos=1, retain=True)  # the next start reads them no more

        # Signed bombs from strangers on the attestation and model topics. One handler runs
        # per topic kind and only the newest message waits: each model message is sent once the
        # one before was answered, so each has its result.
        before = verified_batches()
        bombs = [*_hostile_signed(cose.TYP_ATTESTATION), b"\xff" * 100]
        for message in bombs:
            pub(f"{base}/attestation", message, qos=1)
        answered = 1  # the retained one

        def send_model(message: bytes) -> None:
            nonlocal answered
            pub(f"{base}/model", message, qos=1)
            answered += 1
            assert collector.wait_for(lambda: n_results(answered), 30), gw.log.read_text()[-3000:]

        models = [_arrays_sign1(), _junk_sign1(), _junk(), *_hostile_signed(cose.TYP_MODEL)]
        for message in models[1:]:  # (the first: the retained one, already refused)
            send_model(message)
        assert collector.wait_for(lambda: more_batches(before), 15)

        # The configured attestor's attestation is taken; a stranger's afterwards is not.
        pub(f"{base}/attestation", _attestation(ATTESTOR, device.did, 0.75), qos=1)
        assert collector.wait_for(
            lambda: health_shows(lambda h: (h["attestation"] or {}).get("score") == 0.75), 15
        ), _health(collector)
        pub(f"{base}/attestation", _attestation(hostile.throwaway(), device.did, 0.0), qos=1)

        # Models: a shadow, its promotion, then the shadow replayed, a bundle for another
        # device, a downgrade.
        shadow = bundle(1, "shadow")
        for message in (shadow, bundle(2)):
            send_model(message)
        refused = [
            (shadow, "stale"),
            (bundle(3, to="another-device"), "not-for-this-device"),
            (bundle(1, manifest=SHIPPED), "stale"),
        ]
        for message, _ in refused:
            send_model(message)
        total = answered
        assert total == len(models) + 2 + len(refused)
        before = verified_batches()
        assert collector.wait_for(lambda: more_batches(before), 15)
        ignored_models = len(models) + len(refused)
        ignored_attestations = len(bombs) + 1 + 1
        assert collector.wait_for(
            lambda: health_shows(
                lambda h: (
                    h["ignored_messages"].get("model", 0) >= ignored_models
                    and h["ignored_messages"].get("attestation", 0) >= ignored_attestations
                )
            ),
            15,
        ), _health(collector)

        # A flood of stranger's bundles as large as the topic allows: each is either refused by
        # its kid or replaced, unhandled, by the next; never one held per message.
        flood = _large_stranger_bundle()
        for _ in range(FLOOD):
            pub(f"{base}/model", flood, qos=1).wait_for_publish(30)
        del flood
        assert collector.wait_for(
            lambda: health_shows(
                lambda h: h["ignored_messages"].get("model", 0) >= ignored_models + FLOOD
            ),
            60,
        ), _health(collector)
        peak = hostile.peak_rss(gw.proc.pid) if gw.proc else 0
        assert gw.running()
        assert gw.terminate() == 0
    finally:
        collector.client.publish(f"{base}/model", b"", qos=1, retain=True)
        collector.close()
        if gw.running():
            gw.kill()

    results = _results(collector)
    assert all(r["result"] == "rejected" for r in results[: len(models)]), results
    assert all(r.get("kind") == "untrusted-signer" for r in results[total:]), results[total:]
    assert [r["result"] for r in results[len(models) : len(models) + 2]] == ["shadow", "applied"]
    assert [(r["result"], r.get("kind")) for r in results[len(models) + 2 : total]] == [
        ("rejected", kind) for _, kind in refused
    ]
    health = _health(collector)
    assert health is not None
    # Only the configured attestor's word, and only the promoted model, reached health.
    assert health["attestation"]["attestor"] == ATTESTOR.did
    assert health["attestation"]["score"] == 0.75
    assert health["models"]["temperature-ae"]["sha256"] == NEW_SHA
    assert health["shadow"] == {}
    assert health["ignored_messages"]["status"] >= 1  # Home Assistant's topic: the junk there
    log = gw.log.read_text()
    assert "Traceback" not in log
    # Every batch it published verified: no forgery, no break in the chain.
    assert verified and all(kind in LINKED or kind == "duplicate" for kind in verified), verified
    assert "over the 4096 byte cap for 'attestation' messages" in log
    assert limits.cap(f"{base}/attestation") < JUNK
    assert 0 < peak < MEMORY_MAX, f"peak RSS {peak / 2**20:.0f} MiB"
