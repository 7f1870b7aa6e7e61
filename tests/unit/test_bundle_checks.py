"""Model bundles of the second format (gateway/models/bundle.py): whom they are for (key 8) and
their release (key 9) are signed and checked; the first format is refused with its reason; and
no input, however odd, makes `open_bundle` raise anything but ModelBundleError."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.core.errors import ModelBundleError
from gateway.models.bundle import make_bundle, open_bundle
from gateway.wire import cose, dcbor
from gateway.wire.identity import Identity
from tests import hostile

SHIPPED = Path(__file__).resolve().parents[2] / "models" / "temperature-ae.json"
A = Identity.from_private_key(Ed25519PrivateKey.generate())  # the trusted operator
DEVICE = Identity.from_private_key(Ed25519PrivateKey.generate()).device_id


@pytest.fixture(scope="module")
def bundle() -> bytes:
    return make_bundle(A, SHIPPED, targets=[DEVICE, "fleet:north"], release=3)


def _payload(message: bytes) -> dict[int, Any]:
    obj = cbor2.loads(cose.verify1(message).payload)
    assert isinstance(obj, dict)
    return obj


def _signed(payload: dict[int, Any]) -> bytes:
    return cose.sign1(A, cose.TYP_MODEL, dcbor.dumps(payload))


def _refused(message: bytes, kind: str) -> ModelBundleError:
    with pytest.raises(ModelBundleError) as info:
        open_bundle(message, trusted=[A.did])
    assert info.value.kind == kind, info.value
    return info.value


def test_targets_and_release_are_signed_and_read_back(bundle: bytes) -> None:
    p = _payload(bundle)
    assert sorted(p) == list(range(1, 10))
    assert (p[8], p[9]) == ([DEVICE, "fleet:north"], 3)
    b = open_bundle(bundle, trusted=[A.did])
    assert (b.targets, b.release) == ((DEVICE, "fleet:north"), 3)
    assert b.is_for(DEVICE, None) and b.is_for("other", "north")
    assert not b.is_for("other", None) and not b.is_for("other", "south")


def test_a_first_format_bundle_is_refused_as_replayable(bundle: bytes) -> None:
    p = _payload(bundle)
    del p[8], p[9]
    err = _refused(_signed(p), "old-format")
    assert "replayed" in err.detail and "--release" in err.detail


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (8, []),
        (8, "fleet:north"),
        (8, [DEVICE, 7]),
        (8, ["../etc"]),
        (8, ["fleet:"]),
        (8, ["x"] * 257),
        (9, 0),
        (9, -1),
        (9, "2"),
        (9, 2**64 - 1),
    ],
)
def test_odd_targets_or_releases_are_malformed(bundle: bytes, key: int, value: Any) -> None:
    p = _payload(bundle)
    p[key] = value
    _refused(_signed(p), "malformed")


def test_make_bundle_refuses_what_a_gateway_would_refuse() -> None:
    with pytest.raises(ModelBundleError):
        make_bundle(A, SHIPPED, targets=[], release=1)
    with pytest.raises(ModelBundleError):
        make_bundle(A, SHIPPED, targets=[DEVICE], release=0)


@pytest.mark.parametrize(
    "payload",
    [
        hostile.sharing_bomb(),
        hostile.self_reference(),
        hostile.deep_nesting(10_000),
        *hostile.unknown_tags().values(),
        *hostile.huge_lengths().values(),
    ],
)
def test_hostile_payloads_by_a_trusted_signer_are_malformed(payload: bytes) -> None:
    """A trusted key's payload is decoded strictly: no bomb is built, nothing else raises."""
    _refused(hostile.signed(payload, cose.TYP_MODEL, A), "malformed")


def test_a_big_unprotected_header_is_refused_before_it_is_decoded() -> None:
    n = 1 << 20
    junk = hostile.head(4, n) + b"\xa0" * n
    empty = hostile.head(2, 0)
    message = b"\xd2\x84" + empty + b"\xa1\x01" + junk + empty + hostile.head(2, 64) + bytes(64)
    assert "unprotected header" in _refused(message, "malformed").detail


# --------------------------------------------------------------------------- fuzz

FUZZ = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)


def _open(message: bytes) -> None:
    # anything but ModelBundleError fails the test
    with contextlib.suppress(ModelBundleError):
        open_bundle(message, trusted=[A.did])


@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_any_bytes(data: bytes) -> None:
    _open(data)
    _open(b"\xd2\x84\x40\xa0" + data)


@FUZZ
@given(st.binary(max_size=512))
def test_fuzz_any_payload_by_the_trusted_signer(data: bytes) -> None:
    _open(hostile.signed(data, cose.TYP_MODEL, A))


_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**64), max_value=2**64 - 1)
    | st.text(max_size=20)
    | st.binary(max_size=40),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.integers(0, 12), inner, max_size=4)
    ),
    max_leaves=12,
)


@FUZZ
@given(st.dictionaries(st.integers(1, 10), _VALUES, max_size=10))
def test_fuzz_changed_fields_of_a_real_bundle(bundle: bytes, changes: dict[int, Any]) -> None:
    p = {**_payload(bundle), **changes}
    _open(cose.sign1(A, cose.TYP_MODEL, cbor2.dumps(p, canonical=True)))


def test_model_sign_names_the_targets_and_the_release(tmp_path: Path) -> None:
    import subprocess
    import sys

    from gateway.wire import identity

    op = identity.generate(tmp_path / "operator.key")
    out = tmp_path / "bundle.cose"
    sign = [sys.executable, "-m", "gateway", "model", "sign", str(SHIPPED)]
    sign += ["--key", str(tmp_path / "operator.key"), "-o", str(out), "--release", "5"]
    r = subprocess.run([*sign, "--for", DEVICE, "--fleet", "north"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    b = open_bundle(out.read_bytes(), trusted=[op.did])
    assert (b.targets, b.release) == ((DEVICE, "fleet:north"), 5)
    out.unlink()
    r = subprocess.run(sign, capture_output=True, text=True)
    assert r.returncode == 2 and "--for DEVICE_ID" in r.stderr and not out.exists()


def test_a_strangers_bundle_is_refused_by_its_kid_before_its_signature_is_checked(
    bundle: bytes,
) -> None:
    """The kid in the protected header (a few dozen bytes) names the signer: a stranger's bundle
    of megabytes is refused without hashing it or checking its signature, so a broken signature
    on it is reported as the stranger's, and a trusted signer's broken one still as broken."""
    stranger = make_bundle(hostile.throwaway(), SHIPPED, targets=[DEVICE], release=3)
    broken = bytearray(stranger)
    broken[-1] ^= 1
    assert "is not in trusted_model_signers" in _refused(bytes(broken), "untrusted-signer").detail
    tampered = bytearray(bundle)
    tampered[-1] ^= 1
    _refused(bytes(tampered), "bad-signature")


def test_a_payload_slot_that_is_not_a_byte_string_is_refused_unread() -> None:
    """Megabytes of empty arrays where the payload belongs, under a trusted kid: refused from
    the head of the payload slot."""
    protected = cose.protected_header(A.kid, cose.TYP_MODEL)
    arrays = hostile.head(4, 100_000) + b"\x80" * 100_000
    message = (
        b"\xd2\x84" + hostile.head(2, len(protected)) + protected + b"\xa0" + arrays
        + hostile.head(2, 64) + bytes(64)
    )  # fmt: skip
    assert "byte string" in _refused(message, "malformed").detail
