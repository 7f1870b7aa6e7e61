"""Signed model bundles: how a TFLite model and its manifest travel to a gateway (issue 4, item 5).

A bundle is one COSE_Sign1 (`gateway.wire.cose`, EdDSA/Ed25519,
typ `application/vnd.depin.model+cbor`)
whose kid is the signer's Ed25519 key and whose payload is a deterministic CBOR map (spec §7)::

    {1: name        text   the model's name; installed as <name>.tflite and <name>.json
     2: version     text   the manifest's "version"
     3: manifest    bytes  the manifest file (`<name>.json`) byte for byte, as written by train.py
     4: model       bytes  the `.tflite` file byte for byte
     5: sha256      bytes  SHA-256 of key 4 (32 bytes); must equal the manifest's "sha256"
     6: signed-at   uint   Unix seconds when the bundle was made
     7: mode        text   "active" or "shadow": how the sender means it to be run
     8: for         array  the gateways it is for, 1 to 256 texts: a device id, or
                           "fleet:<name>" for every gateway whose `[models] fleet` is <name>
     9: release     uint   the bundle's release number for this model name, above every
                           release of that name signed before (1 and up)}

A gateway accepts a bundle only when the signature verifies, the typ is the model typ, the signer's
did:key is one of its `trusted_model_signers`, the payload is exactly this map in deterministic
CBOR, SHA-256(model) == key 5 == the manifest's sha256, and the manifest's name/version (when it
has them) are keys 1 and 2. Installing writes the pair into the models directory atomically and
re-runs the `tflite` module's manifest check on the written files before they replace anything.

A bundle of the first format (keys 1..7, no targets, no release) is refused as "old-format": it
installs on any gateway and cannot be told from a replay, which is exactly what keys 8 and 9 stop.

What it is not:
- not encrypted: anyone who sees the bundle has the model;
- not a rollback or replay defence by itself: an old bundle by a trusted signer verifies for
  ever. `is_for` says whether a gateway is among its targets, and the model store
  (`gateway.models.store`) refuses a release not above the highest it accepted of that name;
- not a manifest check: window, threshold, shape ... are the `tflite` module's business
  (`read_manifest`, run by `install` and again when the module loads the model);
- not a policy: `mode` is carried, not acted on. `install` writes `<name>.{tflite,json}` whatever
  the mode, so a shadow model should carry its own name (or go to its own directory).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gateway.core.errors import ConfigError, ModelBundleError, ModelError, VerifyError
from gateway.modules.tflite import read_manifest
from gateway.wire import cose, dcbor, limits, strict
from gateway.wire.identity import MULTICODEC_ED25519, Identity, did_of, public_key_of_did

Mode = Literal["active", "shadow"]
MODES: tuple[Mode, ...] = ("active", "shadow")
#: bundles above this size are refused before any parsing (MQTT payloads can be huge)
MAX_BUNDLE_BYTES = limits.CAPS["model"]
#: a model name becomes a file name: no separators, no leading dot, nothing exotic
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_KEYS = frozenset(range(1, 10))
_OLD_KEYS = frozenset(range(1, 8))
#: targets a bundle may name: enough for a fleet by name and a few devices besides
MAX_TARGETS = 256
FLEET = "fleet:"
#: a target is a device id (`gateway.wire.identity.device_id_of`) or "fleet:<name>"
_TARGET = re.compile(r"(fleet:)?[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class Bundle:
    """A verified bundle: every field was checked by `open_bundle`."""

    name: str
    version: str
    manifest: bytes  # the manifest file, exactly
    model: bytes  # the .tflite file, exactly
    sha256: bytes  # of `model`
    signed_at: int
    mode: Mode
    signer: str  # did:key of the signer (one of the trusted ones)
    targets: tuple[str, ...]  # device ids and "fleet:<name>"
    release: int  # above every earlier release of this name

    def is_for(self, device_id: str, fleet: str | None) -> bool:
        """Whether this bundle names the device, or the fleet it belongs to."""
        return device_id in self.targets or (fleet is not None and FLEET + fleet in self.targets)


def _doc(manifest: bytes) -> Any:
    try:
        return json.loads(manifest.decode("utf-8"))
    # ValueError: bad UTF-8, bad JSON, and integers too long to convert; RecursionError: nesting
    except (ValueError, RecursionError) as e:
        raise ModelBundleError("malformed", f"the manifest is not JSON: {e}") from None


def _check_manifest(doc: Any, name: str, version: str, sha: bytes) -> None:
    """The bundle-level agreement between manifest and payload (not the tflite checks)."""
    if not isinstance(doc, dict):
        raise ModelBundleError("malformed", "the manifest is not a JSON object")
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name.endswith(".json"):
        raise ModelBundleError("malformed", f"model name {name!r} is not a safe file name")
    if doc.get("name", name) != name or str(doc.get("version", "")) != version:
        raise ModelBundleError(
            "name-mismatch",
            f"the bundle says {name} {version}, its manifest says "
            f"{doc.get('name')!r} {doc.get('version')!r}",
        )
    file = doc.get("file")
    if file is not None and file != f"{name}.tflite":
        raise ModelBundleError(
            "name-mismatch", f"the manifest's file is {file!r}, the bundle installs {name}.tflite"
        )
    want = doc.get("sha256")
    if not isinstance(want, str) or want.lower() != sha.hex():
        raise ModelBundleError(
            "sha-mismatch", f"the manifest says sha256 {want!r}, the model has {sha.hex()}"
        )


def _check_targets(targets: Any) -> tuple[str, ...]:
    if not isinstance(targets, list | tuple) or not 1 <= len(targets) <= MAX_TARGETS:
        raise ModelBundleError(
            "malformed", f"key 8 (for) must be an array of 1 to {MAX_TARGETS} targets"
        )
    for t in targets:
        if not isinstance(t, str) or not _TARGET.fullmatch(t):
            raise ModelBundleError(
                "malformed", f"key 8 (for): {t!r} is not a device id or 'fleet:<name>'"
            )
    return tuple(targets)


def _check_release(release: Any) -> int:
    if type(release) is not int or not 1 <= release < 2**63:
        raise ModelBundleError("malformed", "key 9 (release) must be an integer from 1 to 2**63-1")
    return release


def make_bundle(
    identity: Identity,
    manifest_path: Path,
    *,
    targets: Sequence[str],
    release: int,
    mode: Mode = "active",
    now: float | None = None,
) -> bytes:
    """Sign the model beside `manifest_path` (`NAME.json` + its `.tflite`) into a bundle for
    `targets` (device ids, "fleet:<name>") as release `release` of its name.

    The manifest is first checked by the `tflite` module (sha256 of the model included), so a
    bundle is never made of a pair the gateway would refuse.
    """
    if mode not in MODES:
        raise ModelBundleError("malformed", f"mode {mode!r} is not one of {', '.join(MODES)}")
    for_ = _check_targets(list(targets))
    release = _check_release(release)
    manifest_path = Path(manifest_path)
    try:
        raw = manifest_path.read_bytes()
        m, model = read_manifest(manifest_path)
        changed = manifest_path.read_bytes() != raw
    except ModelError as e:
        kind = "sha-mismatch" if e.check.startswith("sha256 mismatch") else "malformed"
        raise ModelBundleError(kind, str(e)) from e
    except OSError as e:
        raise ModelBundleError("malformed", f"{manifest_path}: {e.strerror or e}") from e
    if changed:
        raise ModelBundleError("malformed", f"{manifest_path} changed while it was read")
    sha = hashlib.sha256(model).digest()
    _check_manifest(_doc(raw), m.name, m.version, sha)
    payload = dcbor.dumps(
        {
            1: m.name,
            2: m.version,
            3: raw,
            4: model,
            5: sha,
            6: int(time.time() if now is None else now),
            7: mode,
            8: list(for_),
            9: release,
        }
    )
    return cose.sign1(identity, cose.TYP_MODEL, payload)


def _trusted_keys(trusted: Collection[str]) -> frozenset[bytes]:
    keys, bad = set(), []
    for did in trusted:
        try:
            keys.add(public_key_of_did(did))
        except (ValueError, TypeError):
            bad.append(f"trusted_model_signers: {did!r} is not an Ed25519 did:key")
    if bad:
        raise ConfigError(bad)
    return frozenset(keys)


def _payload(data: bytes) -> dict[int, Any]:
    try:
        # strict: no tags, bounded depth and lengths, judged from the bytes before cbor2 builds
        # and in the deterministic encoding, checked on the bytes (no 16 MiB re-encoding)
        obj = strict.loads(data, deterministic=True)
    except strict.DecodeError as e:
        raise ModelBundleError("malformed", f"payload is not CBOR a bundle may hold: {e}") from None
    if not isinstance(obj, dict) or any(type(k) is not int for k in obj):
        raise ModelBundleError("malformed", "payload must be a map with integer keys")
    if set(obj) == _OLD_KEYS:
        raise ModelBundleError(
            "old-format",
            "a bundle without targets (key 8) and release (key 9): it would install on any "
            "gateway and could be replayed; sign it again with `depin-gateway model sign --for "
            "... --release N`",
        )
    if set(obj) != _KEYS:
        raise ModelBundleError("malformed", "payload must be a map with exactly the keys 1..9")
    types = {1: str, 2: str, 3: bytes, 4: bytes, 5: bytes, 6: int, 7: str}
    for k, t in types.items():
        if type(obj[k]) is not t:
            raise ModelBundleError("malformed", f"key {k} must be {t.__name__}")
    if len(obj[5]) != 32:
        raise ModelBundleError("malformed", "key 5 (sha256) must be 32 bytes")
    if obj[6] < 0:
        raise ModelBundleError("malformed", "key 6 (signed-at) must be unsigned")
    if obj[7] not in MODES:
        raise ModelBundleError("malformed", f"key 7 (mode) {obj[7]!r} is not active or shadow")
    _check_targets(obj[8])
    _check_release(obj[9])
    return obj


def _check_shape(message: bytes) -> bytes:
    """The first bytes of a COSE_Sign1 with the empty unprotected header the spec requires and a
    byte string in the payload slot; returns the protected header's bytes. Only the heads are
    read here: what follows the payload's head (its bytes, then the signature) is left to the
    strict decoder, which bounds items and containers. A bundle may be megabytes, and a few
    megabytes of small CBOR items (in an unprotected header, or where the payload belongs) are
    hundreds of megabytes of Python objects once decoded, before any check could refuse them."""
    if message[:2] != b"\xd2\x84":
        raise ModelBundleError("malformed", "not a COSE_Sign1 (tag 18 around an array of 4)")
    ib = message[2] if len(message) > 2 else 0
    ai, pos = ib & 0x1F, 3
    if ib >> 5 != 2 or ai > 25:
        raise ModelBundleError("malformed", "the protected header must be a short byte string")
    if ai >= 24:
        size = 1 << (ai - 24)
        n, pos = int.from_bytes(message[3 : 3 + size], "big"), 3 + size
    else:
        n = ai
    protected = message[pos : pos + n]
    if message[pos + n : pos + n + 1] != b"\xa0":
        raise ModelBundleError("malformed", "the unprotected header must be the empty map")
    payload_head = message[pos + n + 1 : pos + n + 2]
    if not payload_head or payload_head[0] >> 5 != 2:
        raise ModelBundleError("malformed", "the payload must be a byte string")
    return protected


def _signer_key(protected: bytes, keys: frozenset[bytes]) -> bytes:
    """The public key in the protected header's kid, when it is a trusted signer's. The header
    is a few dozen bytes: a stranger's bundle is refused before its megabytes are hashed or its
    signature checked. The signature check that follows still judges the header as a whole."""
    try:
        hdr = strict.loads(protected)
    except strict.DecodeError as e:
        raise ModelBundleError(
            "malformed", f"the protected header is not strict CBOR: {e}"
        ) from None
    kid = hdr.get(4) if isinstance(hdr, dict) else None
    if not isinstance(kid, bytes) or len(kid) != 34 or kid[:2] != MULTICODEC_ED25519:
        raise ModelBundleError("malformed", "kid must be 0xED01 followed by a 32-byte Ed25519 key")
    key = kid[2:]
    if key not in keys:
        raise ModelBundleError("untrusted-signer", f"{did_of(key)} is not in trusted_model_signers")
    return key


def open_bundle(message: bytes, *, trusted: Collection[str]) -> Bundle:
    """Verify a bundle and return its contents; `ModelBundleError` names what was wrong.

    `trusted` is the list of did:key strings allowed to sign models (`trusted_model_signers`);
    an entry that is not an Ed25519 did:key is a `ConfigError`. An empty list trusts nobody.
    """
    if isinstance(trusted, str):  # a lone did would be iterated character by character
        trusted = [trusted]
    keys = _trusted_keys(trusted)
    if not isinstance(message, bytes | bytearray | memoryview):
        raise ModelBundleError("malformed", f"a bundle is bytes, not {type(message).__name__}")
    message = bytes(message)
    if len(message) > MAX_BUNDLE_BYTES:
        raise ModelBundleError("malformed", f"over the {MAX_BUNDLE_BYTES} byte limit")
    key = _signer_key(_check_shape(message), keys)
    try:
        s = cose.verify1(message)
    except VerifyError as e:
        kind = "bad-signature" if e.kind == "bad-signature" else "malformed"
        raise ModelBundleError(kind, e.detail) from None
    if s.typ != cose.TYP_MODEL:
        raise ModelBundleError("malformed", f"typ is {s.typ!r}, not {cose.TYP_MODEL!r}")
    signer = did_of(s.public_key)
    if s.public_key != key:  # the header verified is the one read above: cannot differ
        raise ModelBundleError("untrusted-signer", f"{signer} is not in trusted_model_signers")
    # Only a trusted signer's payload is parsed any further.
    p = _payload(s.payload)
    name, version, manifest, model, sha = p[1], p[2], p[3], p[4], p[5]
    got = hashlib.sha256(model).digest()
    if got != sha:
        raise ModelBundleError(
            "sha-mismatch", f"the model has sha256 {got.hex()}, the bundle says {sha.hex()}"
        )
    _check_manifest(_doc(manifest), name, version, sha)
    return Bundle(
        name=name,
        version=version,
        manifest=manifest,
        model=model,
        sha256=sha,
        signed_at=p[6],
        mode=p[7],
        signer=signer,
        targets=tuple(p[8]),
        release=p[9],
    )


def _write(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def install(bundle: Bundle, models_dir: Path) -> Path:
    """Write `<name>.tflite` and `<name>.json` into `models_dir`; returns the manifest's path.

    Both files are first written (and fsynced) into a staging directory inside `models_dir` and
    checked there by the `tflite` module's `read_manifest` (sha256 of the bytes on disk included);
    a refused or failed write leaves the installed pair untouched. Then the model is renamed into
    place, then the manifest, so the manifest never names a model that is not there. If renaming
    the manifest fails, the previous model is put back. A crash between the two renames leaves
    the new model under the old manifest, which the `tflite` module refuses (sha256 mismatch)
    rather than run; installing the bundle again completes it.
    """
    models_dir = Path(models_dir)
    _check_manifest(_doc(bundle.manifest), bundle.name, bundle.version, bundle.sha256)
    if hashlib.sha256(bundle.model).digest() != bundle.sha256:
        raise ModelBundleError("sha-mismatch", "the bundle's model does not match its sha256")
    models_dir.mkdir(parents=True, exist_ok=True)
    model_path = models_dir / f"{bundle.name}.tflite"
    manifest_path = models_dir / f"{bundle.name}.json"
    stage = Path(tempfile.mkdtemp(prefix=f".{bundle.name}.install-", dir=models_dir))
    try:
        staged_model = stage / model_path.name
        staged_manifest = stage / manifest_path.name
        _write(staged_model, bundle.model)
        _write(staged_manifest, bundle.manifest)
        try:
            m, data = read_manifest(staged_manifest)
        except ModelError as e:
            kind = "sha-mismatch" if e.check.startswith("sha256 mismatch") else "malformed"
            raise ModelBundleError(kind, f"the tflite module refuses it: {e}") from e
        if data != bundle.model or m.sha256 != bundle.sha256.hex():
            raise ModelBundleError("sha-mismatch", "the written model is not the bundle's")
        backup: Path | None = None
        if model_path.exists():
            backup = stage / "previous.tflite"
            try:
                os.link(model_path, backup)
            except OSError:
                shutil.copy2(model_path, backup)
        _fsync_dir(stage)
        os.replace(staged_model, model_path)
        try:
            os.replace(staged_manifest, manifest_path)
        except BaseException:
            if backup is not None:
                os.replace(backup, model_path)
            else:
                model_path.unlink(missing_ok=True)
            raise
        _fsync_dir(models_dir)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    try:
        read_manifest(manifest_path)  # what is there now is what the module will load
    except ModelError as e:
        raise ModelBundleError("sha-mismatch", f"the installed pair changed under us: {e}") from e
    return manifest_path
