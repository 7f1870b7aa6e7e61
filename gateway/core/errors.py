"""The gateway's errors, in one place and in families, the way gpiozero arranges its own.

Library code raises these; only the edges (the CLI, the daemon) turn them into one line and an
exit code. Each family also derives from the built-in exception a caller would expect, so
`except ValueError` around a parse still works::

    GatewayError                      exit 1 unless a class says otherwise
     +-- ConfigError (ValueError)     exit 2: the configuration, with every problem's place
     |    +-- ModelError              a model or manifest the configuration names is unusable
     +-- RuntimeMissing               exit 2: an extra the configuration needs is not installed
     +-- PathNotFoundError (FileNotFoundError)  exit 2: a path given on the command line
     +-- IdentityError                exit 3: the device key
     |    +-- KeyInUse                exit 5: another gateway signs with this key
     +-- SpoolError                   exit 4: the spool cannot be used
     +-- SensorError (OSError)        a read failed; the sampler retries with backoff
     +-- UplinkError (ConnectionError)  the broker; the uplink retries with backoff
     +-- VerifyError (ValueError)     a message failed verification; `kind` names the finding
     +-- ModelBundleError (ValueError)  a model bundle was refused; `kind` names why
     +-- ProofError                   a proof cannot be made

Which errors are retried is decided where they are caught (the sampler, the uplink), by class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path


class GatewayError(Exception):
    """Base of every error the gateway raises on purpose."""

    exit_code = 1


class ConfigError(GatewayError, ValueError):
    """The configuration is unusable; `problems` lists every finding, each naming its place."""

    exit_code = 2

    def __init__(self, problems: list[str], *, source: str = "") -> None:
        self.problems = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "; ".join(self.problems))


class IdentityError(GatewayError):
    """The device key is missing, unreadable, malformed or too widely readable."""

    exit_code = 3


class SpoolError(GatewayError):
    """The spool cannot be used (corrupt, not ours, disk trouble)."""

    exit_code = 4


class KeyInUse(IdentityError):
    """Another gateway signs with this device's key (seen on the broker). Its own exit code:
    the systemd unit does not restart on it (a restart would take turns on one chain)."""

    exit_code = 5


class SensorError(GatewayError, OSError):
    """A sensor did not deliver a valid reading this time; the sampler retries with backoff."""


class UplinkError(GatewayError, ConnectionError):
    """The broker could not be reached or refused us; the uplink retries with backoff."""


class VerifyError(GatewayError, ValueError):
    """A message failed verification (spec section 9); `kind` is the finding's short name."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(f"{kind}: {detail}")


class RuntimeMissing(GatewayError):
    """No TFLite interpreter (or no numpy) is installed: the installation lacks an extra, which
    is the configuration's business (it names a `tflite` module), hence exit code 2."""

    exit_code = 2


class ModelError(ConfigError):
    """A model or its manifest is unusable; the message names the file, the check and the fix."""

    def __init__(self, path: Path, check: str, fix: str) -> None:
        self.path = path
        self.check = check
        super().__init__([f"{path}: {check} — {fix}"])


class ProofError(GatewayError):
    """A proof cannot be made (the batch does not verify, no such record, unreadable input)."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class PathNotFoundError(GatewayError, FileNotFoundError):
    """A file or directory given to `verify_paths` does not exist: a usage error, not a finding."""

    exit_code = 2


class ModelBundleError(GatewayError, ValueError):
    """A bundle was refused; `kind` is one of "bad-signature", "untrusted-signer",
    "sha-mismatch", "malformed", "name-mismatch", "old-format" (keys 1..7 only: no targets, no
    release, so it could be replayed anywhere).

    The model store refuses a bundle that opened as "not-for-this-device" (this gateway is not
    among its targets) or "stale" (its release is not above the highest accepted of its name),
    and a model the interpreter will not load as "model-refused": those are kinds of its
    `Outcome` (published on `model/result`), never raised as this error."""

    def __init__(self, kind: str, detail: str) -> None:
        self.kind = kind
        self.detail = detail
        super().__init__(f"model bundle refused ({kind}): {detail}")
