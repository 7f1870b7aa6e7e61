"""Signed model bundles (gateway/models/bundle.py): sign -> open -> install -> the tflite module
loads it; every kind of bad bundle is refused and the installed model keeps working."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.core.errors import ConfigError, GatewayError, ModelBundleError
from gateway.models.bundle import Bundle, install, make_bundle, open_bundle
from gateway.modules import tflite
from gateway.wire import cose, dcbor
from gateway.wire.identity import Identity

pytest.importorskip("ai_edge_litert.interpreter")

MODELS = Path(__file__).resolve().parents[2] / "models"
SHIPPED = MODELS / "temperature-ae.json"
A = Identity.from_private_key(Ed25519PrivateKey.generate())  # the trusted operator
B = Identity.from_private_key(Ed25519PrivateKey.generate())  # someone else
DEVICE = Identity.from_private_key(Ed25519PrivateKey.generate()).device_id  # the gateway
FOR: dict[str, Any] = {"targets": [DEVICE], "release": 1}  # whom a bundle is for, and its release


def _payload(message: bytes) -> dict[int, Any]:
    obj = cbor2.loads(cose.verify1(message).payload)
    assert isinstance(obj, dict)
    return obj


def _resign(message: bytes, signer: Identity = A, **changes: Any) -> bytes:
    """The bundle's payload with keys changed (k1=..., k4=...), signed again by `signer`."""
    p = _payload(message)
    for key, value in changes.items():
        p[int(key[1:])] = value
    return cose.sign1(signer, cose.TYP_MODEL, dcbor.dumps(p))


def _refused(message: bytes, kind: str, trusted: list[str] | None = None) -> ModelBundleError:
    with pytest.raises(ModelBundleError) as info:
        open_bundle(message, trusted=[A.did] if trusted is None else trusted)
    assert info.value.kind == kind, info.value
    assert isinstance(info.value, GatewayError)
    return info.value


def _module(models_dir: Path) -> tflite.TFLiteModule:
    return tflite.TFLiteModule(
        module_id="m", options={"model": "temperature-ae", "models_dir": models_dir}
    )


def _pair(models_dir: Path) -> tuple[bytes, bytes]:
    return (
        (models_dir / "temperature-ae.json").read_bytes(),
        (models_dir / "temperature-ae.tflite").read_bytes(),
    )


@pytest.fixture(scope="module")
def bundle() -> bytes:
    return make_bundle(A, SHIPPED, targets=[DEVICE, "fleet:north"], release=7, now=1_700_000_000)


# --------------------------------------------------------------------------- round trip


def test_sign_open_install_then_the_tflite_module_loads_it(bundle: bytes, tmp_path: Path) -> None:
    b = open_bundle(bundle, trusted=[B.did, A.did])
    shipped_manifest, shipped_model = _pair(MODELS)
    assert b.name == "temperature-ae"
    assert b.version == json.loads(shipped_manifest)["version"]
    assert b.manifest == shipped_manifest and b.model == shipped_model
    assert b.sha256 == hashlib.sha256(shipped_model).digest()
    assert (b.signed_at, b.mode, b.signer) == (1_700_000_000, "active", A.did)
    assert (b.targets, b.release) == ((DEVICE, "fleet:north"), 7)

    path = install(b, tmp_path)
    assert path == tmp_path / "temperature-ae.json"
    assert _pair(tmp_path) == (shipped_manifest, shipped_model)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "temperature-ae.json",
        "temperature-ae.tflite",
    ]  # no staging leftovers
    mod = _module(tmp_path)
    assert mod.manifest.path == path
    assert mod.digest() == b.sha256


def test_the_payload_is_the_documented_deterministic_map(bundle: bytes) -> None:
    s = cose.verify1(bundle)
    assert s.typ == cose.TYP_MODEL
    assert dcbor.is_deterministic(s.payload)
    p = _payload(bundle)
    assert sorted(p) == [1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert p[5] == hashlib.sha256(p[4]).digest()


def test_shadow_mode_is_carried(tmp_path: Path) -> None:
    b = open_bundle(make_bundle(A, SHIPPED, mode="shadow", **FOR), trusted=[A.did])
    assert b.mode == "shadow"
    with pytest.raises(ModelBundleError):
        make_bundle(A, SHIPPED, mode="promoted", **FOR)  # type: ignore[arg-type]


def test_make_bundle_refuses_a_pair_whose_sha256_does_not_match(tmp_path: Path) -> None:
    for suffix in (".json", ".tflite"):
        shutil.copy(MODELS / f"temperature-ae{suffix}", tmp_path / f"temperature-ae{suffix}")
    model = tmp_path / "temperature-ae.tflite"
    data = bytearray(model.read_bytes())
    data[-1] ^= 1
    model.write_bytes(bytes(data))
    with pytest.raises(ModelBundleError) as info:
        make_bundle(A, tmp_path / "temperature-ae.json", **FOR)
    assert info.value.kind == "sha-mismatch"
    with pytest.raises(ModelBundleError) as info:
        make_bundle(A, tmp_path / "missing.json", **FOR)
    assert info.value.kind == "malformed"


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    "message",
    [
        b"",
        b"garbage",
        cbor2.dumps({1: "temperature-ae"}),  # a bare payload, not a COSE_Sign1
        cbor2.dumps(cbor2.CBORTag(18, [b"", {}, b"", b""])),
    ],
)
def test_garbage_is_malformed(message: bytes) -> None:
    _refused(message, "malformed")


def test_an_unsigned_bundle_is_refused(bundle: bytes) -> None:
    protected = cose.protected_header(A.kid, cose.TYP_MODEL)
    payload = cose.verify1(bundle).payload
    unsigned = cbor2.dumps(cbor2.CBORTag(18, [protected, {}, payload, bytes(64)]))
    _refused(unsigned, "bad-signature")


def test_a_tampered_signature_or_payload_is_refused(bundle: bytes) -> None:
    sig = bytearray(bundle)
    sig[-1] ^= 1  # the signature is the last item
    _refused(bytes(sig), "bad-signature")
    s = cose.verify1(bundle)
    payload = bytearray(s.payload)
    payload[len(payload) // 2] ^= 1
    swapped = cbor2.dumps(cbor2.CBORTag(18, [s.protected, {}, bytes(payload), s.signature]))
    _refused(swapped, "bad-signature")
    _refused(bundle + b"\x00", "malformed")  # trailing bytes


def test_a_bundle_signed_by_an_untrusted_key_is_refused(bundle: bytes) -> None:
    err = _refused(make_bundle(B, SHIPPED, **FOR), "untrusted-signer")
    assert B.did in str(err)
    _refused(bundle, "untrusted-signer", trusted=[])
    _refused(bundle, "untrusted-signer", trusted=[B.did])


def test_a_malformed_trust_list_is_a_config_error(bundle: bytes) -> None:
    with pytest.raises(ConfigError):
        open_bundle(bundle, trusted=["did:web:example.org"])
    assert open_bundle(bundle, trusted=A.did).signer == A.did  # a lone string is one did


def test_another_typ_is_refused(bundle: bytes) -> None:
    batch = cose.sign1(A, cose.TYP_BATCH, cose.verify1(bundle).payload)
    _refused(batch, "malformed")


def test_altered_model_bytes_are_refused_even_when_resigned(bundle: bytes) -> None:
    p = _payload(bundle)
    model = bytearray(p[4])
    model[100] ^= 1
    # key 5 still the old digest: the model does not match it
    _refused(_resign(bundle, k4=bytes(model)), "sha-mismatch")
    # key 5 updated too: the manifest's sha256 still says otherwise
    altered = _resign(bundle, k4=bytes(model), k5=hashlib.sha256(model).digest())
    err = _refused(altered, "sha-mismatch")
    assert "manifest" in str(err)


def test_name_or_version_disagreeing_with_the_manifest_is_refused(bundle: bytes) -> None:
    _refused(_resign(bundle, k1="humidity-ae"), "name-mismatch")
    _refused(_resign(bundle, k2="9.9.9"), "name-mismatch")


@pytest.mark.parametrize(
    "changes",
    [
        {"k1": "../evil"},
        {"k1": ".hidden"},
        {"k3": b"not json"},
        {"k5": b"short"},
        {"k6": -1},
        {"k6": "yesterday"},
        {"k7": "promoted"},
    ],
)
def test_malformed_payloads_are_refused(bundle: bytes, changes: dict[str, Any]) -> None:
    _refused(_resign(bundle, **changes), "malformed")


def test_a_payload_with_extra_keys_or_not_deterministic_is_refused(bundle: bytes) -> None:
    p = _payload(bundle)
    extra = cose.sign1(A, cose.TYP_MODEL, dcbor.dumps({**p, 10: "x"}))
    _refused(extra, "malformed")
    loose = cose.sign1(A, cose.TYP_MODEL, cbor2.dumps(dict(sorted(p.items(), reverse=True))))
    _refused(loose, "malformed")


# --------------------------------------------------------------------------- install safety


def _installed(tmp_path: Path) -> tuple[bytes, bytes]:
    for suffix in (".json", ".tflite"):
        shutil.copy(MODELS / f"temperature-ae{suffix}", tmp_path / f"temperature-ae{suffix}")
    return _pair(tmp_path)


def test_a_refused_update_leaves_the_previous_model_working(bundle: bytes, tmp_path: Path) -> None:
    before = _installed(tmp_path)
    p = _payload(bundle)
    model = bytearray(p[4])
    model[100] ^= 1
    for bad in (
        _resign(bundle, k4=bytes(model)),
        make_bundle(B, SHIPPED, **FOR),
        bundle[:-1] + bytes([bundle[-1] ^ 1]),
    ):
        with pytest.raises(ModelBundleError):
            install(open_bundle(bad, trusted=[A.did]), tmp_path)
    assert _pair(tmp_path) == before
    _module(tmp_path)


def test_install_refused_by_the_tflite_check_leaves_the_previous_pair(
    bundle: bytes, tmp_path: Path
) -> None:
    before = _installed(tmp_path)
    doc = json.loads(before[0])
    doc["version"] = "2.0.0"
    doc["inputs"]["window"] = 1  # signed and sha-consistent, but the module would refuse it
    bad = _resign(bundle, k2="2.0.0", k3=json.dumps(doc).encode())
    b = open_bundle(bad, trusted=[A.did])
    with pytest.raises(ModelBundleError, match="window"):
        install(b, tmp_path)
    assert _pair(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "temperature-ae.json",
        "temperature-ae.tflite",
    ]
    _module(tmp_path)


def test_a_crash_between_the_renames_puts_the_previous_model_back(
    bundle: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _installed(tmp_path)
    doc = json.loads(before[0])
    doc["version"] = "2.0.0"
    b = open_bundle(_resign(bundle, k2="2.0.0", k3=json.dumps(doc).encode()), trusted=[A.did])
    real = os.replace

    def failing(src: Any, dst: Any) -> None:
        if str(dst).endswith(".json"):
            raise OSError(28, "No space left on device")
        real(src, dst)

    monkeypatch.setattr(os, "replace", failing)
    with pytest.raises(OSError):
        install(b, tmp_path)
    monkeypatch.undo()
    assert _pair(tmp_path) == before
    _module(tmp_path)
    assert install(b, tmp_path) == tmp_path / "temperature-ae.json"
    assert _module(tmp_path).manifest.version == "2.0.0"


def test_install_refuses_a_hand_made_inconsistent_bundle(tmp_path: Path) -> None:
    manifest, model = _pair(MODELS)
    b = Bundle(
        name="temperature-ae",
        version="1.0.0",
        manifest=manifest,
        model=model + b"x",
        sha256=hashlib.sha256(model).digest(),
        signed_at=0,
        mode="active",
        signer=A.did,
        targets=(DEVICE,),
        release=1,
    )
    with pytest.raises(ModelBundleError) as info:
        install(b, tmp_path)
    assert info.value.kind == "sha-mismatch"
    assert list(tmp_path.iterdir()) == []


def test_the_batch_verifier_does_not_take_a_model_bundle(tmp_path: Path) -> None:
    from gateway.wire.verify import Verifier

    ident = Identity.from_private_key(Ed25519PrivateKey.from_private_bytes(bytes([5]) * 32))
    message = make_bundle(ident, SHIPPED, **FOR)
    f = Verifier().check(message)
    assert f.kind == "malformed" and "model bundle" in f.detail


def test_model_sign_command_makes_a_bundle_that_opens(tmp_path: Path) -> None:
    import subprocess
    import sys

    from gateway.wire import identity

    op = identity.generate(tmp_path / "operator.key")
    out = tmp_path / "bundle.cose"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "model",
            "sign",
            str(SHIPPED),
            "--key",
            str(tmp_path / "operator.key"),
            "-o",
            str(out),
            "--shadow",
            "--for",
            DEVICE,
            "--release",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    b = open_bundle(out.read_bytes(), trusted=[op.did])
    assert (b.name, b.mode, b.signer) == ("temperature-ae", "shadow", op.did)
    assert (b.targets, b.release) == ((DEVICE,), 2)
