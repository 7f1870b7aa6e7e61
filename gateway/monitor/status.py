"""`depin-gateway status`: the local gateway at a glance, for an owner on SSH.

Two sources, both local: the spool (read-only: chain position, what waits for the broker, drops,
the newest readings not yet sealed) and the status file the daemon keeps in a runtime directory
(on tmpfs where there is one, so it costs the SD card nothing): the latest values and flags, the
uplink, errors, the latest attestation.

Where the status file is, for a daemon and its `status` alike (`status_file`):

- under systemd, `$RUNTIME_DIRECTORY/status.json` (`/run/depin-gateway`): a unit runs one
  gateway, and `status`, which does not have that variable, looks there by default;
- started by hand, `status-<key>.json` in `$XDG_RUNTIME_DIR/depin-gateway` (the login session's
  tmpfs), else in `/dev/shm/depin-gateway-<uid>`, the key a hash of the spool's path: two gateways
  started by hand never share a file, and `status -c` finds the one of its configuration's spool.

Each file names its spool and its daemon's pid: `status` takes a file only if it is this
configuration's spool and that process still runs, whichever directory it was found in.

Of the configuration `status` shows three things: the gateway's name, its spool and its broker
(`settings`). It reads them from the file itself rather than through the strict loader
(`gateway.config.settings`), which checks every `[[sensor]]` and `[[module]]` against its plug-in's
options and so imports every driver and module named, more than the rest of `status` costs
together; whenever one of the three is missing, malformed or not plainly valid, the strict
loader takes over and reports every problem of the file, as it always did.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from gateway.mqtt import url as broker_url  # light: no MQTT client, no ssl

if TYPE_CHECKING:  # the strict loader: imported only when `settings` falls back to it
    from gateway.config.settings import Config

STATUS_FILE = "status.json"
DEFAULT_RUNTIME = Path("/run/depin-gateway")
#: the last resort for a gateway started by hand without a session runtime directory: /dev/shm,
#: a tmpfs on every Linux, not /tmp, which is on the SD card on Raspberry Pi OS Bookworm: the
#: file is rewritten every `state_interval`, which there alone would write about 4 MB an hour
TMP = Path("/dev/shm") if os.path.isdir("/dev/shm") else Path("/tmp")


#: the defaults of the keys `settings` reads, as gateway/config/sections.py declares them
#: (tests/integration/test_cli_imports.py checks that the two agree)
DEFAULT_SPOOL = "/var/lib/depin-gateway/spool.db"
DEFAULT_URL = "mqtt://127.0.0.1:1883"


class Settings(NamedTuple):
    """What `status` shows of a configuration."""

    name: str  # [device] name
    spool: Path  # [spool] path, absolute
    host: str  # the broker of [uplink] url
    port: int

    @classmethod
    def of(cls, cfg: Config) -> Settings:
        return cls(cfg.device.name, cfg.spool.path, cfg.uplink.host, cfg.uplink.port)


def settings(path: Path) -> Settings:
    """The settings `status` shows of the configuration file `path`, the same as the strict
    loader resolves them. Raises ConfigError listing every problem of the file when one of
    them is not plainly valid (see the module's docstring)."""
    try:
        quick = _quick_settings(path)
    except Exception:  # whatever this reading does not expect, the strict loader explains
        quick = None
    if quick is not None:
        return quick
    from gateway.config import settings as config

    return Settings.of(config.load(path))


def _quick_settings(path: Path) -> Settings | None:
    """The settings read straight from the file, by the rules of gateway/config/sections.py for
    these keys; None where those rules would report a problem (or might: anything unusual)."""
    import tomllib

    doc = tomllib.loads(path.read_bytes().decode("utf-8"))
    device, spool, uplink = doc.get("device"), doc.get("spool", {}), doc.get("uplink", {})
    if not (isinstance(device, dict) and isinstance(spool, dict) and isinstance(uplink, dict)):
        return None
    name, where = device.get("name"), spool.get("path", DEFAULT_SPOOL)
    url, insecure = uplink.get("url", DEFAULT_URL), uplink.get("insecure", False)
    if not (isinstance(name, str) and name.strip() and isinstance(where, str) and where):
        return None
    if not (isinstance(url, str) and isinstance(insecure, bool)):
        return None
    try:
        broker = broker_url.parse(url, where="uplink.url")
    except ValueError:
        return None
    if broker.plain_off_machine and not insecure:
        return None
    spool_path = Path(where)
    if not spool_path.is_absolute():  # relative paths are taken from the file's directory
        spool_path = path.absolute().parent / spool_path
    return Settings(name, Path(os.path.normpath(spool_path.absolute())), broker.host, broker.port)


def runtime_dir() -> Path | None:
    """systemd's RuntimeDirectory, when the process has one."""
    env = os.environ.get("RUNTIME_DIRECTORY")
    return Path(env.split(":")[0]) if env else None


def spool_key(spool: Path) -> str:
    """The spool's real path (symlinks resolved where they can be read), as status files name
    it; the same for the daemon and for `status` of the same configuration."""
    return os.path.realpath(spool)


def _name(spool: Path) -> str:
    # Two checksums, 64 bits: enough to keep one user's gateways apart (each file also names
    # its spool); zlib costs `status` nothing to load, hashlib would load OpenSSL.
    key = spool_key(spool).encode()
    return f"status-{zlib.crc32(key):08x}{zlib.adler32(key):08x}.json"


def _session_dir() -> Path | None:
    xdg = os.environ.get("XDG_RUNTIME_DIR")
    return Path(xdg) / "depin-gateway" if xdg else None


def status_file(spool: Path) -> Path:
    """Where the daemon of `spool` writes its status file (see the module's docstring)."""
    unit = runtime_dir()
    if unit is not None:
        return unit / STATUS_FILE
    session = _session_dir()
    # A session directory of our own (after `su` the variable may name another user's).
    if session is not None and _owned_dir(session.parent):
        return session / _name(spool)
    return TMP / f"depin-gateway-{os.getuid()}" / _name(spool)


def _owned_dir(path: Path) -> bool:
    """A real directory (not a symlink) owned by this user: in a shared /dev/shm anyone could
    have made `/dev/shm/depin-gateway-<uid>` first."""
    try:
        st = path.lstat()
    except OSError:
        return False
    return (st.st_mode & 0o170000) == 0o040000 and st.st_uid == os.getuid()


def prepare_dir(path: Path) -> bool:
    """Create the status file's directory if needed; False when it is not safely ours to write
    in. Readable by all (0755), as systemd's RuntimeDirectoryMode: values and counters, nothing
    secret, and a `status` run by another user (root's gateway, the owner's SSH) can read it."""
    try:
        path.mkdir(mode=0o755, exist_ok=True)
    except OSError:
        return False
    if path == runtime_dir():
        return True
    if not _owned_dir(path):
        return False
    _sweep(path)
    return True


def _sweep(folder: Path) -> None:
    """Remove the files of gateways that did not stop cleanly (killed, crashed): `status`
    ignores them anyway, and in /dev/shm nothing else would until the next boot."""
    for old in folder.glob("status-*.json"):
        try:
            pid = json.loads(old.read_text(encoding="utf-8")).get("pid")
        except (OSError, ValueError, AttributeError):
            continue  # being written, or not ours to judge
        if not _running(pid):
            old.unlink(missing_ok=True)


def _candidates(spool: Path) -> list[Path]:
    """Every place the status file of `spool` can be, most likely first."""
    found = [d / STATUS_FILE for d in (runtime_dir(), DEFAULT_RUNTIME) if d is not None]
    name = _name(spool)
    session = _session_dir()
    if session is not None:
        found.append(session / name)
    uids = [os.getuid()]
    try:  # the daemon made the spool: its owner is the daemon's user, maybe not ours
        owner = spool.stat().st_uid
    except OSError:
        owner = None
    if owner is not None and owner not in uids:
        uids.append(owner)
    for uid in uids:
        found.append(Path(f"/run/user/{uid}/depin-gateway/{name}"))
        found.append(TMP / f"depin-gateway-{uid}" / name)
    return list(dict.fromkeys(found))


def _running(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process (root's gateway): it runs
    return True


def spool_facts(path: Path, *, newest: int = 200, latest: bool = True) -> dict[str, Any]:
    """What the spool says; with `latest`, also the newest reading of each quantity among the
    `newest` readings not sealed yet."""
    if not path.exists():
        return {"error": f"{path} does not exist (the gateway has not run yet?)"}
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error as e:
        return {"error": f"{path}: {e}"}
    try:
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
        pending, oldest_pending = con.execute("SELECT count(*), min(t) FROM readings").fetchone()
        sealed, sealed_n, oldest_sealed, last_sealed = con.execute(
            "SELECT count(*), coalesce(sum(n), 0), min(first_t), max(sealed) FROM batches"
        ).fetchone()
        dropped = con.execute("SELECT coalesce(sum(n), 0) FROM drops").fetchone()[0]
        rows = (
            con.execute(
                "SELECT record FROM readings ORDER BY id DESC LIMIT ?", (newest,)
            ).fetchall()
            if latest
            else []
        )
    except sqlite3.Error as e:
        return {"error": f"{path}: not a readable spool: {e}"}
    finally:
        con.close()
    next_seq = int(meta.get("next_seq", 0))
    facts = {
        "did": meta.get("did"),
        "next_seq": next_seq,
        "pending": pending,
        "oldest_pending": oldest_pending,
        "sealed_batches": sealed,
        "sealed_readings": sealed_n,
        "oldest_sealed": oldest_sealed,
        "last_sealed": last_sealed,
        "dropped": dropped,
    }
    if latest:
        facts["latest"] = _latest([record for (record,) in rows])
    return facts


def _latest(records: list[bytes]) -> dict[str, dict[str, Any]]:
    """The newest reading of each name among `records` (newest first)."""
    # Here, not at the top: `status` of a running daemon shows its values, not these, and does
    # without the CBOR stack.
    import cbor2

    from gateway.wire import payloads

    found: dict[str, dict[str, Any]] = {}
    for record in records:
        r = cbor2.loads(record)
        found.setdefault(
            r[payloads.N],
            {"v": r.get(payloads.V), "u": r[payloads.U], "t": r[payloads.T],
             "af": r.get(payloads.FLAGS, [])},
        )  # fmt: skip
    return found


def read_status(cfg: Settings) -> dict[str, Any] | None:
    """The status file of this configuration's running daemon, or None."""
    key = spool_key(cfg.spool)
    for path in _candidates(cfg.spool):
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        # Another gateway's file (systemd's, while this config is one run by hand), or one
        # left behind by a daemon that was killed: not this gateway's state.
        if isinstance(doc, dict) and doc.get("spool") == key and _running(doc.get("pid")):
            doc["_path"] = str(path)
            return doc
    return None


def _age(t: float | None, now: float) -> str:
    if t is None:
        return "-"
    s = max(0.0, now - float(t))
    if s < 120:
        return f"{s:.0f} s ago"
    if s < 7200:
        return f"{s / 60:.0f} min ago"
    return f"{s / 3600:.1f} h ago"


def render(cfg: Settings, spool: dict[str, Any], status: dict[str, Any] | None, now: float) -> str:
    out = [f"gateway {cfg.name}"]
    if "error" in spool:
        out.append(f"  spool: {spool['error']}")
        spool = {}
    else:
        out.append(f"  device {spool['did']}")
    health = (status or {}).get("health") or {}
    state = (status or {}).get("state") or {}
    if status is None:
        out.append("  daemon: not running (no status file for this spool); spool only")
    else:
        age = _age(health.get("t"), now)
        up = health.get("uptime_s")
        out.append(
            f"  daemon: status {age}, up {up:.0f} s, version {health.get('version')}"
            if isinstance(up, int | float)
            else f"  daemon: status {age}"
        )
    out.append("sensors")
    shown = False
    for sid, quantities in sorted((state.get("sensors") or {}).items()):
        for q, r in sorted(quantities.items()):
            shown = True
            value = "failed" if r.get("v") is None else f"{r['v']:g} {r.get('u', '')}"
            flags = f"  [{', '.join(r['af'])}]" if r.get("af") else ""
            out.append(f"  {sid}/{q:<12} {value:<16} {_age(r.get('t'), now)}{flags}")
    if not shown:
        for name, r in sorted(spool.get("latest", {}).items()):
            shown = True
            value = "failed" if r.get("v") is None else f"{r['v']:g} {r['u']}"
            flags = f"  [{', '.join(r['af'])}]" if r.get("af") else ""
            out.append(f"  {name:<20} {value:<16} {_age(r.get('t'), now)}{flags} (from the spool)")
    if not shown:
        out.append("  no readings yet")
    errors = health.get("sensor_errors") or {}
    if errors:
        out.append("  errors: " + ", ".join(f"{k} {v}" for k, v in sorted(errors.items())))
    out.append("queue")
    if spool:
        out.append(
            f"  {spool['pending']} readings waiting to be sealed (oldest "
            f"{_age(spool['oldest_pending'], now)}), {spool['sealed_batches']} sealed batches "
            f"({spool['sealed_readings']} readings) waiting for the broker"
        )
        if spool["dropped"]:
            out.append(f"  {spool['dropped']} readings dropped at the spool's size cap")
    out.append("uplink")
    if health:
        state_text = "connected" if health.get("connected") else "NOT connected"
        out.append(
            f"  {state_text} to {cfg.host}:{cfg.port} (MQTT "
            f"{health.get('protocol') or '?'}), {health.get('batches_acked', 0)} batches "
            f"acknowledged since start"
        )
        if health.get("last_error"):
            out.append(f"  last error: {health['last_error']}")
    else:
        out.append(f"  broker {cfg.host}:{cfg.port}: unknown (no status file)")
    out.append("chain")
    if spool:
        last = spool["next_seq"] - 1
        out.append(
            "  no batch sealed yet"
            if last < 0
            else f"  last sealed batch seq {last} ({_age(spool['last_sealed'], now)})"
            if spool["last_sealed"]
            else f"  last sealed batch seq {last} (acknowledged)"
        )
    att = health.get("attestation")
    if att:
        out.append(
            f"  latest attestation: score {att['score']:.3f}, chain {att.get('status')}, "
            f"by {att.get('attestor')}"
        )
    ignored = health.get("ignored_messages") or {}
    if ignored:
        # Anyone on the broker can send these: worth a look when they grow, never an error.
        counts = ", ".join(f"{k} {v}" for k, v in sorted(ignored.items()))
        out.append(f"  ignored from the broker: {counts}")
    return "\n".join(out) + "\n"


def main(cfg: Settings, *, as_json: bool = False) -> str:
    now = time.time()
    status = read_status(cfg)
    # The spool's newest readings are shown when the daemon's status has no values (it is not
    # running, or has not published them yet), and always in the JSON.
    running_values = bool(((status or {}).get("state") or {}).get("sensors"))
    spool = spool_facts(cfg.spool, latest=as_json or not running_values)
    if as_json:
        return json.dumps({"spool": spool, "status": status}, indent=2, default=str) + "\n"
    return render(cfg, spool, status, now)
