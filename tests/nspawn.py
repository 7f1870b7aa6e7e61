"""A real systemd to run the shipped units under: a Debian root made once with debootstrap,
booted with systemd-nspawn on a throw-away overlay, driven with nsenter.

The root is cached (`DEPIN_NSPAWN_CACHE`, default `~/.cache/depin-gateway/nspawn-bookworm`) and
never written to by a test: every boot gets a fresh overlayfs whose upper layer lives on a
tmpfs, so a run leaves nothing behind. The Python wheels the project needs are downloaded once on
the host with the venv's pip (the machine's configured package sources) into the cache and
bind-mounted into the container, where pip installs from them without an index.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path

SUITE = "bookworm"
#: what the root holds besides debootstrap's minbase: systemd as PID 1 and what install.sh needs
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "udev",
    "kmod",
    "procps",
    "python3",
    "python3-venv",
)
#: the Debian packages that provide the tools on the host
HOST_PACKAGES = ("debootstrap", "systemd-container")
HOST_TOOLS = {"debootstrap": "debootstrap", "systemd-nspawn": "systemd-container"}

CHECKOUT = Path(__file__).resolve().parent.parent
#: the units scripts/install.sh installs
UNITS = ("depin-gateway.service", "depin-gateway-firstboot.service", "depin-gateway-keygen.service")


def _run_logged(argv: list[str], log: Path, what: str) -> None:
    with open(log, "ab") as out:
        res = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, check=False)
    if res.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{what} failed (exit {res.returncode}); the end of {log}:\n{tail}")


def cache_dir() -> Path:
    default = Path("~/.cache/depin-gateway/nspawn-bookworm")
    return Path(os.environ.get("DEPIN_NSPAWN_CACHE", str(default))).expanduser()


def missing_tools() -> list[str]:
    """The host tools that are missing, with the Debian package of each."""
    return [
        f"{tool} (Debian package {pkg})"
        for tool, pkg in HOST_TOOLS.items()
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists()
    ]


def unusable_reason() -> str | None:
    """Why a container cannot run here at all, or None."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, overlay mounts and systemd-nspawn)"
    missing = missing_tools()
    if missing:
        return (
            "missing " + ", ".join(missing) + f"; install with: apt-get install -y "
            f"{' '.join(HOST_PACKAGES)}"
        )
    return None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _stamp() -> str:
    return f"{SUITE} {' '.join(PACKAGES)}\n"


def ensure_root(log: Path) -> Path:
    """The cached Debian root, built with debootstrap the first time (a few minutes)."""
    cache = cache_dir()
    root = cache / "root"
    stamp = cache / "root.complete"
    with _locked(cache / "root.lock"):
        if stamp.exists() and stamp.read_text() == _stamp() and root.is_dir():
            return root
        building = cache / "root.building"
        shutil.rmtree(building, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        stamp.unlink(missing_ok=True)
        _run_logged(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(building),
            ],
            log,
            "debootstrap (from the machine's configured Debian mirror)",
        )
        # a booted container wants a machine id of its own and a quiet console
        (building / "etc/machine-id").write_text("")
        (building / "etc/hostname").write_text("depin-test\n")
        for unit in ("console-getty.service", "getty@tty1.service", "systemd-timesyncd.service"):
            (building / "etc/systemd/system" / unit).unlink(missing_ok=True)
            os.symlink("/dev/null", building / "etc/systemd/system" / unit)
        building.rename(root)
        stamp.write_text(_stamp())
        return root


def _requirements() -> list[str]:
    meta = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())
    build = list(meta["build-system"]["requires"])
    litert = meta["project"]["optional-dependencies"]["litert"]  # install.sh installs it
    return [*build, "wheel", *meta["project"]["dependencies"], *litert]


def ensure_wheels(log: Path) -> Path:
    """Wheels for everything install.sh's pip needs, downloaded on the host once (again when
    the project's requirements change)."""
    wheels = cache_dir() / f"wheels-py{sys.version_info[0]}{sys.version_info[1]}"
    reqs = _requirements()
    stamp = wheels / ".requirements"
    with _locked(cache_dir() / "wheels.lock"):
        if stamp.exists() and stamp.read_text() == "\n".join(reqs):
            return wheels
        wheels.mkdir(parents=True, exist_ok=True)
        _run_logged(
            [sys.executable, "-m", "pip", "download", "-q", "-d", str(wheels), *reqs],
            log,
            "pip download (from the machine's configured package sources)",
        )
        stamp.write_text("\n".join(reqs))
        return wheels


class Container:
    """One boot of the cached root on a fresh overlay. Use as a context manager."""

    def __init__(
        self,
        *,
        workdir: Path,
        root: Path,
        binds: Sequence[tuple[Path, str]] = (),
        boot_timeout: float = 60.0,
    ) -> None:
        self.workdir = workdir
        self.lower = root
        self.binds = list(binds)
        self.boot_timeout = boot_timeout
        self.merged = workdir / "merged"
        self.scratch = workdir / "scratch"
        self.log = workdir / "nspawn.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.leader = 0
        #: what a test keeps for the next ones (e.g. install.sh's output)
        self.notes: dict[str, str] = {}

    # --- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Container:
        try:
            self._mount()
            self._boot()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _mount(self) -> None:
        self.scratch.mkdir(parents=True)
        self.merged.mkdir(parents=True)
        mount_overlay(self.lower, self.scratch, self.merged, name="depin-root")

    def _boot(self) -> None:
        cmd = [
            "systemd-nspawn",
            "--register=no",
            "--keep-unit",
            "--quiet",
            "--console=passive",
            # its own network: nothing in it reaches a broker (or anything else) on the host
            "--private-network",
            "-b",
            "-D",
            str(self.merged),
            *(f"--bind-ro={src}:{dst}" for src, dst in self.binds),
        ]
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + self.boot_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"systemd-nspawn exited early: {self.log.read_text()[-3000:]}")
            self.leader = self._find_leader()
            if self.leader:
                state = self.run(
                    "systemctl", "is-system-running", check=False, timeout=10
                ).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.3)
        raise RuntimeError(f"container did not boot in {self.boot_timeout} s")

    def _find_leader(self) -> int:
        """The container's PID 1 as the host sees it: the child of systemd-nspawn."""
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            pids = children.read_text().split()
        except OSError:
            return 0
        for pid in pids:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
        return 0

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            if self.leader:
                # SIGRTMIN+4 asks systemd for a clean poweroff; SIGKILL if it dawdles
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.leader, signal.SIGRTMIN + 4)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        unmount(self.merged, self.scratch)

    # --- inside ---------------------------------------------------------------------------

    def run(
        self,
        *argv: str,
        check: bool = True,
        timeout: float = 120.0,
        env: dict[str, str] | None = None,
        input: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside the container (all its namespaces, as root)."""
        environment = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
            **(env or {}),
        }
        cmd = [
            "nsenter",
            "-t",
            str(self.leader),
            "-m",
            "-u",
            "-i",
            "-n",
            "-p",
            "-r",
            "-w",
            "--",
            "env",
            "-i",
            *(f"{k}={v}" for k, v in environment.items()),
            *argv,
        ]
        res = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, input=input, check=False
        )
        if check and res.returncode != 0:
            raise AssertionError(
                f"in container: {' '.join(argv)} exited {res.returncode}\n"
                f"stdout:\n{res.stdout[-4000:]}\nstderr:\n{res.stderr[-4000:]}"
            )
        return res

    def sh(self, script: str, **kw: object) -> subprocess.CompletedProcess[str]:
        return self.run("/bin/sh", "-c", script, **kw)  # type: ignore[arg-type]

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run("systemctl", "show", unit, *(f"-p{p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, unit: str) -> str:
        return self.run("journalctl", "--no-pager", "-o", "cat", "-u", unit, check=False).stdout

    def wait_for(
        self, what: str, predicate: object, *, timeout: float, interval: float = 0.5
    ) -> None:
        assert callable(predicate)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(interval)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def mount_overlay(lower: Path, scratch: Path, merged: Path, *, name: str) -> None:
    """A throw-away copy of `lower` at `merged`: an overlay whose upper and work dirs are on a
    tmpfs at `scratch` (overlayfs cannot take them from another overlay)."""
    subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "mode=0755,size=4g", f"{name}-scratch", scratch],
        check=True,
    )
    (scratch / "upper").mkdir()
    (scratch / "work").mkdir()
    opts = f"lowerdir={lower},upperdir={scratch}/upper,workdir={scratch}/work"
    subprocess.run(["mount", "-t", "overlay", "-o", opts, name, merged], check=True)


def unmount(*mounts: Path | str) -> None:
    """Lazily, in the order given (the overlay before the tmpfs under it); absent ones skipped."""
    for mount in mounts:
        if os.path.ismount(mount):
            subprocess.run(["umount", "-l", str(mount)], check=False)
