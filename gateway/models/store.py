"""Model updates over MQTT: what the gateway keeps of the signed bundles it accepted.

An operator publishes a bundle (`depin-gateway model sign`, format in `gateway.models.bundle`) on
`<prefix>/<device id>/model`. The gateway opens it against `[models] trusted_model_signers`,
tries the model in the interpreter, installs it, and only then runs it: as the model of every
`tflite` module whose model has that name ("active"), or beside them with its scores kept out of
the batches ("shadow") until an active bundle of it promotes it.

Layout of `[models] dir` (default: `models/` beside the spool)::

    active/<name>.tflite  active/<name>.json  active/<name>.bundle
    shadow/<name>.tflite  shadow/<name>.json  shadow/<name>.bundle

`<name>.bundle` is the signed message exactly as received. At start an installed model is used
only if its bundle still verifies against the signers configured now and names the sha256 of the
pair on disk: removing a signer from the configuration withdraws what it installed, and a pair
changed on disk is not run.

Targets: a bundle that names neither this device nor `[models] fleet` among its targets is
refused ("not-for-this-device"): a bundle published for one gateway cannot be replayed on another.

Replays: every bundle carries a release number per model name. One whose release is not above the
highest this gateway ever accepted of that name (active or shadow) is refused as "stale", so an
old (say, vulnerable) model cannot be pushed back by replaying its bundle, and a shadow bundle
cannot be replayed after an active bundle of a higher release promoted (or overtook) it. The
highest release accepted of each name is kept in `<dir>/accepted.json`, so a restart does not
forget it even when the bundle itself is gone. A deliberate rollback is a fresh signature of the
old model with a higher release.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Collection
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from gateway.core.files import write_atomic

if TYPE_CHECKING:
    from gateway.models.bundle import Bundle, Mode

# gateway.models.bundle and gateway.modules.tflite are imported where a bundle is handled: a
# gateway that has not received one (most) does not load them at start.

log = logging.getLogger("gateway.models")
T = TypeVar("T")

#: The `[[module]]` kind that runs the models bundles carry: a bundle's model is a `.tflite` file
#: with its manifest (gateway.models.bundle). The gateway finds that kind's class in the plug-in
#: registry and reaches its modules through `gateway.modules.model_backed`.
MODULE_KIND = "tflite"
#: in `[models] dir`: the highest release accepted of each model name, {name: release}
ACCEPTED = "accepted.json"

Result = Literal["applied", "shadow", "unchanged", "rejected"]


@dataclass(frozen=True)
class Installed:
    """A model installed from a verified bundle."""

    name: str
    version: str
    sha256: str  # hex
    signed_at: int
    signer: str
    mode: Mode
    manifest: Path
    release: int = 0


@dataclass(frozen=True)
class Outcome:
    """What became of one bundle; published as JSON on `<prefix>/<device id>/model/result`."""

    result: Result
    reason: str
    # why it was rejected: a ModelBundleError kind, "not-for-this-device", "stale" or
    # "model-refused"
    kind: str = ""
    name: str = ""
    version: str = ""
    release: int = 0
    sha256: str = ""
    mode: str = ""
    signer: str = ""
    at: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in ("", 0)}

    def to_json(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True).encode()


class ModelStore:
    """The installed updates under one directory, and the policy for new bundles."""

    def __init__(self, root: Path, trusted: Collection[str], *, fleet: str | None = None) -> None:
        self.root = Path(root)
        self.trusted = tuple(trusted)
        self.fleet = fleet
        self.installed: dict[Mode, dict[str, Installed]] = {"active": {}, "shadow": {}}
        #: the highest release accepted of each model name, as kept in `accepted.json`
        self.accepted: dict[str, int] = {}

    @property
    def _accepted_path(self) -> Path:
        return self.root / ACCEPTED

    def highest(self, name: str) -> int:
        """The highest release of `name` ever accepted here (0: none)."""
        releases = [self.accepted.get(name, 0)]
        releases += [m[name].release for m in self.installed.values() if name in m]
        return max(releases)

    @property
    def enabled(self) -> bool:
        return bool(self.trusted)

    def load(self) -> None:
        """Read what is installed; a pair whose bundle no longer verifies is left unused."""
        for mode in ("active", "shadow"):
            folder = self.root / mode
            paths = sorted(folder.glob("*.bundle")) if folder.is_dir() else []
            self.installed[mode] = self._verified(paths, mode) if paths else {}
        self.accepted = self._read_accepted()

    def _read_accepted(self) -> dict[str, int]:
        path = self._accepted_path
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            # The installed bundles' releases still hold; the next accepted bundle rewrites it.
            log.warning("%s not read (%s): only the installed releases are known", path, e)
            return {}
        if not isinstance(doc, dict):
            log.warning("%s is not a JSON object: only the installed releases are known", path)
            return {}
        return {k: v for k, v in doc.items() if isinstance(k, str) and type(v) is int and v > 0}

    def _record(self, name: str, release: int) -> None:
        self.accepted[name] = max(self.accepted.get(name, 0), release)
        doc = json.dumps(self.accepted, sort_keys=True, indent=1).encode()
        write_atomic(self._accepted_path, doc + b"\n")

    def _verified(self, paths: list[Path], mode: Mode) -> dict[str, Installed]:
        """The installed models of these bundles that still verify and match their files."""
        from gateway.core.errors import ModelBundleError, ModelError
        from gateway.models.bundle import open_bundle
        from gateway.modules.tflite import read_manifest

        found: dict[str, Installed] = {}
        for path in paths:
            try:
                b = open_bundle(path.read_bytes(), trusted=self.trusted)
                inst = self._installed(b, mode)
                # The model file itself, not just the manifest: a power cut between the two
                # renames of an install leaves a new model under the old manifest.
                manifest, _ = read_manifest(inst.manifest)
                if manifest.sha256 != inst.sha256:
                    raise ModelBundleError("sha-mismatch", "the files are not the bundle's")
            except (ModelBundleError, ModelError, OSError, ValueError) as e:
                log.warning("model update %s not used: %s", path, e)
                continue
            found[b.name] = inst
        return found

    def _installed(self, b: Bundle, mode: Mode) -> Installed:
        return Installed(
            name=b.name,
            version=b.version,
            sha256=b.sha256.hex(),
            signed_at=b.signed_at,
            signer=b.signer,
            mode=mode,
            manifest=self.root / mode / f"{b.name}.json",
            release=b.release,
        )

    def receive(
        self,
        message: bytes,
        trial: Callable[[Path], T],
        *,
        device_id: str,
        now: float | None = None,
    ) -> tuple[Outcome, Installed | None]:
        """Check, try, install a bundle that came to gateway `device_id`. `trial(manifest)`
        loads the model the way the chain will (it raises if the interpreter refuses it) and
        runs on a staged copy before anything installed is touched. Blocking file I/O with
        fsyncs: call it from a thread."""
        from gateway.core.errors import ModelBundleError
        from gateway.models.bundle import install, open_bundle

        at = time.time() if now is None else now
        if not self.enabled:
            return (
                Outcome(
                    "rejected", "no trusted_model_signers are configured", "untrusted-signer", at=at
                ),
                None,
            )
        try:
            b = open_bundle(message, trusted=self.trusted)
        except ModelBundleError as e:
            return Outcome("rejected", e.detail, e.kind, at=at), None

        def out(result: Result, reason: str, kind: str = "") -> Outcome:
            return Outcome(
                result,
                reason,
                kind,
                name=b.name,
                version=b.version,
                release=b.release,
                sha256=b.sha256.hex(),
                mode=b.mode,
                signer=b.signer,
                at=at,
            )

        if not b.is_for(device_id, self.fleet):
            fleet = f" or fleet:{self.fleet}" if self.fleet else " (no [models] fleet is set)"
            why = f"it is for {', '.join(b.targets)}, not {device_id}{fleet}"
            return out("rejected", why, "not-for-this-device"), None
        current = self.installed[b.mode].get(b.name)
        if current is not None and (current.sha256, current.release) == (
            b.sha256.hex(),
            b.release,
        ):
            return out("unchanged", f"{b.name} {b.version} is already {b.mode}"), None
        highest = self.highest(b.name)
        if b.release <= highest:
            why = (
                f"release {b.release} of {b.name} is not above release {highest}, the highest "
                "this gateway accepted: a downgrade or a replay"
            )
            return out("rejected", why, "stale"), None
        self.root.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".trial-", dir=self.root))
        try:
            trial(install(b, stage))
        except ModelBundleError as e:
            return out("rejected", e.detail, e.kind), None
        except Exception as e:  # the interpreter's refusal comes in many types
            why = f"the model does not load: {e}"
            return out("rejected", why, "model-refused"), None
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        inst = self._install(message, b)
        if b.mode == "active":
            return out("applied", f"{b.name} {b.version} is now active"), inst
        return out("shadow", f"{b.name} {b.version} runs in shadow mode"), inst

    def _install(self, message: bytes, b: Bundle) -> Installed:
        from gateway.models.bundle import install

        folder = self.root / b.mode
        install(b, folder)
        # The bundle last: a crash before this line leaves the previous bundle, which no longer
        # names the pair on disk, so `load` runs the configured model rather than a half-install.
        write_atomic(folder / f"{b.name}.bundle", message)
        self._record(b.name, b.release)
        inst = self._installed(b, b.mode)
        self.installed[b.mode][b.name] = inst
        if b.mode == "active":
            self._drop_shadow(b.name)
        return inst

    def _drop_shadow(self, name: str) -> None:
        """An active bundle ends the shadow run of that name: promoted, or overtaken."""
        if self.installed["shadow"].pop(name, None) is None:
            return
        folder = self.root / "shadow"
        (folder / f"{name}.bundle").unlink(missing_ok=True)  # first: what load() looks for
        for suffix in (".json", ".tflite"):
            (folder / f"{name}{suffix}").unlink(missing_ok=True)
