"""Device identity: one Ed25519 key, its did:key and device id (spec section 1)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.core.errors import IdentityError

MULTICODEC_ED25519 = b"\xed\x01"
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58[r] + out
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + out


def b58decode(text: str) -> bytes:
    n = 0
    for ch in text:
        i = _B58.find(ch)
        if i < 0:
            raise ValueError(f"{ch!r} is not a base58 character")
        n = n * 58 + i
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    pad = len(text) - len(text.lstrip("1"))
    return b"\0" * pad + body


def kid_of(public_key: bytes) -> bytes:
    return MULTICODEC_ED25519 + public_key


def did_of(public_key: bytes) -> str:
    return "did:key:z" + b58encode(kid_of(public_key))


def public_key_of_did(did: str) -> bytes:
    """The raw Ed25519 public key inside a did:key; ValueError when it is not one."""
    if not did.startswith("did:key:z"):
        raise ValueError(f"{did!r} is not a did:key in base58btc")
    raw = b58decode(did[len("did:key:z") :])
    if len(raw) != 34 or raw[:2] != MULTICODEC_ED25519:
        raise ValueError(f"{did!r} is not an Ed25519 did:key")
    return raw[2:]


def device_id_of(did: str) -> str:
    return did.removeprefix("did:key:")


@dataclass(frozen=True)
class Identity:
    key: Ed25519PrivateKey
    public_key: bytes

    @property
    def kid(self) -> bytes:
        return kid_of(self.public_key)

    @property
    def did(self) -> str:
        return did_of(self.public_key)

    @property
    def device_id(self) -> str:
        return device_id_of(self.did)

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)

    @classmethod
    def from_private_key(cls, key: Ed25519PrivateKey) -> Identity:
        pub = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return cls(key=key, public_key=pub)


def _make_directories(directory: Path) -> None:
    """Create the missing directories of `directory`, each mode 0700.

    Only the directories made here: one that exists already belongs to its owner (a home
    directory, /etc) and keeps its mode. The new ones are private from the start, not after a
    chmod, because `mkdir` gets 0700 (the umask can only narrow it); the chmod then undoes a
    umask that took the owner's own bits away."""
    missing: list[Path] = []
    d = directory
    while not d.is_dir():
        missing.append(d)
        if d.parent == d:
            break
        d = d.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            # made meanwhile by someone else, or not a directory (then opening the key fails
            # and says so): not ours to change
            continue
        os.chmod(d, 0o700)


def generate(path: Path) -> Identity:
    """Create a new key at `path` (PKCS#8 PEM, mode 0600); never overwrites an existing file."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _make_directories(path.parent)
    try:
        # O_EXCL: a second keygen must never replace the device's identity.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise IdentityError(
            f"key file {path} already exists; refusing to overwrite a device identity "
            f"(show it with: depin-gateway identity show --key {path})"
        ) from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
        f.flush()
        os.fsync(f.fileno())
    return Identity.from_private_key(key)


def load(path: Path, *, check_mode: bool = True) -> Identity:
    """Load the device key; refuse one that group or others can read."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise IdentityError(
            f"key file {path} does not exist; create it with: depin-gateway keygen --key {path}"
        ) from None
    except PermissionError as e:
        raise IdentityError(f"key file {path} cannot be read: {e.strerror}") from None
    if check_mode and st.st_mode & 0o077:
        mode = stat.S_IMODE(st.st_mode)
        raise IdentityError(
            f"key file {path} is readable by group or others (mode {mode:04o}); "
            f"fix it with: chmod 600 {path}"
        )
    try:
        data = path.read_bytes()
        key = serialization.load_pem_private_key(data, password=None)
    except PermissionError as e:
        raise IdentityError(f"key file {path} cannot be read: {e.strerror}") from None
    except (ValueError, TypeError) as e:
        raise IdentityError(f"key file {path} is not a PKCS#8 PEM private key: {e}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"key file {path} holds a {type(key).__name__}, not an Ed25519 key")
    return Identity.from_private_key(key)
