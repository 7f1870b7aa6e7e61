"""The Pi's architecture, emulated: a Debian Bookworm arm64 root run through qemu-aarch64 on an
x86_64 host, in which the project is installed from its wheel and run. `scripts/arm64-smoke`
runs `python -m tests.arm64`; `--help` lists the options.

What it checks, in the root, on the wheel built from this checkout and the aarch64 wheels a
Raspberry Pi's pip would pick (resolved on the host for the root's Python and glibc, then
installed there without an index): `pip install 'depin_gateway-*.whl[litert,demo]'`,
`depin-gateway config check` of the sample (and of the sample with the shipped model as a
`tflite` module), `depin-gateway demo --duration 20` verifying every reading, and the shipped
model loaded by the real aarch64 TFLite runtime reproducing the outputs stored in
tests/vectors/tflite and flagging its spike (tests/arm64_model.py).

How aarch64 code runs here: the kernel's binfmt_misc hands aarch64 ELF files to
qemu-aarch64-static (Debian's qemu-user-static); the handler is registered from the package's
/usr/lib/binfmt.d/qemu-aarch64.conf when it is missing (root only). Its F flag makes the kernel
keep the host's emulator open, so nothing is copied into the root and every process in it,
children included (dpkg, pip, the gateway's own), runs emulated. The root is made with
`debootstrap --arch=arm64 --foreign` and the second stage run in it under emulation (about six
minutes), once: it is cached like the nspawn root (`DEPIN_ARM64_CACHE`, default
`~/.cache/depin-gateway/arm64-bookworm`) and never written to; every run gets a fresh overlay on
a tmpfs, which is not booted: each step is one `systemd-nspawn` command in it, with a private
network.

The emulated CPU is a Raspberry Pi's: QEMU_CPU=cortex-a72 (Pi 4, the default) or cortex-a76
(Pi 5), so native code sees a Pi's hardware capabilities and not everything qemu's "max" CPU
offers, and /proc/cpuinfo in the root describes that Pi. The latter is needed as well:
Bookworm's qemu 7.2 hands an aarch64 program the host's x86 /proc/cpuinfo, and the CPU
detection in ai-edge-litert >= 2.2 dereferences NULL when that file lists no ARM core while
/sys lists cores and caches (a segfault when the interpreter is created; Debian 13's qemu 10
emulates the file, and a Pi's kernel of course has it).

`--if-changed` skips the run when the files it covers (WATCHED) and the run's settings have the
fingerprint of a PASS on this machine (kept in the cache, one record per fingerprint) less than
`--max-age` days old; anything else, a fresh machine included, runs it. A FAIL forgets the PASS
of its fingerprint. The age limit makes a week-old PASS run again even with nothing changed
here: the wheels a Pi's pip picks (ai-edge-litert, numpy) move on PyPI without a commit.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from tests import nspawn
from tests.nspawn import _locked, _run_logged

#: the checkout and the Debian release, as for the nspawn root
CHECKOUT = nspawn.CHECKOUT
SUITE = nspawn.SUITE
ARCH = "arm64"
#: what the root holds besides debootstrap's minbase
PACKAGES = ("python3", "python3-venv")
#: the Debian packages that provide the tools on the host
HOST_PACKAGES = ("debootstrap", "systemd-container", "qemu-user-static")
HOST_TOOLS = {
    "debootstrap": "debootstrap",
    "systemd-nspawn": "systemd-container",
    "qemu-aarch64-static": "qemu-user-static",
}
#: the files whose change makes `--if-changed` run the smoke test again (globs, from the checkout)
WATCHED = (
    "pyproject.toml",
    "gateway/modules/tflite.py",
    "gateway/modules/litert.py",
    "gateway/modules/model_backed.py",
    "models/*.tflite",
    "models/*.json",
    "scripts/install.sh",
    "scripts/arm64-smoke",
    "tests/arm64.py",
    "tests/arm64_model.py",
    "tests/nspawn.py",
    "tests/vectors/tflite/*.json",
)
#: the extras installed with the wheel: litert must exist, demo is taken when pyproject has it
EXTRAS = ("litert", "demo")
DEMO_SECONDS = 20
VECTORS = CHECKOUT / "tests" / "vectors" / "tflite" / "temperature-ae.json"
BINFMT = Path("/proc/sys/fs/binfmt_misc")
BINFMT_CONF = Path("/usr/lib/binfmt.d/qemu-aarch64.conf")
#: ELF, 64-bit, little endian, e_machine EM_AARCH64 (0xb7): the start of every aarch64 handler
AARCH64_MAGIC = "7f454c460201010000000000000000000200b700"
VENV = "/opt/depin-gateway/venv"
#: prints "aarch64 arm64 aarch64 PYTHON-VERSION ... CPU-PART" on an arm64 root
ARCH_SCRIPT = """\
uname -m
dpkg --print-architecture
python3 -c 'import platform, sys; print(platform.machine(), sys.version.split()[0])'
grep -m1 '^CPU part' /proc/cpuinfo
"""
#: the steps in the root after the install
CHECK_SAMPLE = "config check (sample)"
CHECK_MODEL = "config check (tflite module)"
DEMO = f"demo --duration {DEMO_SECONDS}"
MODEL = "shipped model, aarch64 TFLite"
NOISE = 'Attempted to remove disk file system under "/run/systemd/nspawn/propagate'


@dataclass(frozen=True)
class Profile:
    """A Raspberry Pi's CPU, as qemu emulates it and as /proc/cpuinfo describes it."""

    qemu_cpu: str
    part: str
    variant: str
    revision: int
    features: str
    model: str


PROFILES = {
    "pi4": Profile(
        "cortex-a72", "0xd08", "0x0", 3, "fp asimd evtstrm crc32 cpuid", "Raspberry Pi 4 Model B"
    ),
    "pi5": Profile(
        "cortex-a76",
        "0xd0b",
        "0x4",
        1,
        "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc "
        "dcpop asimddp",
        "Raspberry Pi 5 Model B",
    ),
}


class Unusable(Exception):
    """The host cannot run the smoke test at all (not root, a tool or binfmt_misc missing)."""


# --------------------------------------------------------------------------- host side


def cache_dir() -> Path:
    default = Path("~/.cache/depin-gateway/arm64-bookworm")
    return Path(os.environ.get("DEPIN_ARM64_CACHE", str(default))).expanduser()


def unusable_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (debootstrap, binfmt_misc, overlay mounts and systemd-nspawn)"
    missing = [
        f"{tool} (Debian package {pkg})"
        for tool, pkg in HOST_TOOLS.items()
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists()
    ]
    if missing:
        return f"missing {', '.join(missing)}; apt-get install -y {' '.join(HOST_PACKAGES)}"
    return None


@dataclass(frozen=True)
class Handler:
    name: str
    interpreter: str
    flags: str


def aarch64_handler() -> Handler | None:
    """The enabled binfmt_misc handler for aarch64 ELF files, if there is one."""
    for entry in sorted(BINFMT.iterdir()):
        if entry.name in ("register", "status"):
            continue
        with contextlib.suppress(OSError):
            lines = entry.read_text().splitlines()
            info = dict(line.split(" ", 1) for line in lines if " " in line)
            if "enabled" in lines and info.get("magic", "").startswith(AARCH64_MAGIC):
                return Handler(entry.name, info.get("interpreter", "?"), info.get("flags:", ""))
    return None


def ensure_binfmt() -> str:
    """aarch64 binaries run through qemu: mounts binfmt_misc and registers Debian's handler
    when missing. Returns what it found or did; Unusable when the kernel will not have it."""
    if not (BINFMT / "register").exists():
        res = subprocess.run(
            ["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)],
            capture_output=True,
            text=True,
            check=False,
        )
        if res.returncode != 0:
            raise Unusable(f"binfmt_misc is not mounted and cannot be: {res.stderr.strip()}")
    if (BINFMT / "status").read_text().strip() != "enabled":
        raise Unusable(f"binfmt_misc is disabled ({BINFMT}/status); `echo 1 >` it to enable")
    how = "registered before"
    handler = aarch64_handler()
    if handler is None:
        if not BINFMT_CONF.is_file():
            raise Unusable(f"no aarch64 handler and no {BINFMT_CONF} (Debian's qemu-user-static)")
        try:
            (BINFMT / "register").write_text(BINFMT_CONF.read_text().strip())
        except OSError as e:
            raise Unusable(f"the kernel refused the aarch64 binfmt_misc handler: {e}") from e
        how = "registered now"
        handler = aarch64_handler()
        if handler is None:
            raise Unusable("the aarch64 binfmt_misc handler was registered but is not enabled")
    if "F" not in handler.flags:
        # without F the interpreter is looked up inside the root, where it is not
        raise Unusable(
            f"the binfmt_misc handler {handler.name} lacks the F flag (flags {handler.flags!r}); "
            f"re-register it from {BINFMT_CONF}"
        )
    return f"{handler.name} {how}: {handler.interpreter} (flags {handler.flags})"


def _debian_mirror() -> str | None:
    """The Debian archive this machine's apt is configured with (the first `deb` source of a
    main suite), for debootstrap; None leaves debootstrap its default."""
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        with contextlib.suppress(OSError):
            for stanza in re.split(r"\n\s*\n", path.read_text()):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if ":" in line and not line.startswith(("#", " ")):
                        key, _, value = line.partition(":")
                        fields[key.strip().lower()] = value.strip()
                suites = fields.get("suites", "").split()
                if "deb" in fields.get("types", "").split() and any("-" not in s for s in suites):
                    uris = fields.get("uris", "").split()
                    if uris and fields.get("enabled", "yes").lower() != "no":
                        return uris[0]
    with contextlib.suppress(OSError):
        for line in Path("/etc/apt/sources.list").read_text().splitlines():
            words = [w for w in line.split() if not w.startswith("[")]
            if len(words) >= 3 and words[0] == "deb" and "-" not in words[2]:
                return words[1]
    return None


def _stamp() -> str:
    return f"{SUITE} {ARCH} {' '.join(PACKAGES)}\n"


def ensure_root(log: Path) -> tuple[Path, bool]:
    """The cached arm64 root, built the first time (debootstrap's first stage on the host, the
    second under emulation: about six minutes). Returns the root and whether it was built now.
    Needs the binfmt handler (ensure_binfmt) when it builds."""
    cache = cache_dir()
    root = cache / "root"
    stamp = cache / "root.complete"
    with _locked(cache / "root.lock"):
        if stamp.exists() and stamp.read_text() == _stamp() and root.is_dir():
            return root, False
        building = cache / "root.building"
        shutil.rmtree(building, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
        stamp.unlink(missing_ok=True)
        mirror = _debian_mirror()
        _run_logged(
            [
                "debootstrap",
                f"--arch={ARCH}",
                "--foreign",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(building),
                *([mirror] if mirror else []),
            ],
            log,
            "debootstrap, first stage (from the machine's configured Debian mirror)",
        )
        _run_logged(
            ["chroot", str(building), "/debootstrap/debootstrap", "--second-stage"],
            log,
            "debootstrap, second stage (aarch64 under qemu)",
        )
        shutil.rmtree(building / "var/cache/apt/archives", ignore_errors=True)
        (building / "var/cache/apt/archives/partial").mkdir(parents=True)
        building.rename(root)
        stamp.write_text(_stamp())
        return root, True


def root_versions(root: Path) -> tuple[str, str]:
    """(glibc "2.36", Python "3.11") of the root, from its dpkg database."""
    out = subprocess.run(
        ["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f=${Version}\\n", "libc6"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    glibc = re.match(r"(\d+\.\d+)", out.strip())
    python = sorted(root.glob("usr/bin/python3.[0-9]*"))
    pyver = re.fullmatch(r"python(3\.\d+)", python[0].name) if python else None
    if glibc is None or pyver is None:
        raise RuntimeError(f"cannot tell the root's glibc ({out.strip()!r}) or Python ({python})")
    return glibc.group(1), pyver.group(1)


def platform_tags(glibc: str) -> list[str]:
    """pip's --platform values for aarch64 with that glibc, in a Pi's pip's order of preference
    (pip takes the list as given: a manylinux_2_28 wheel needs manylinux_2_28 named)."""
    major, minor = (int(x) for x in glibc.split("."))
    tags = [f"manylinux_{major}_{m}_aarch64" for m in range(minor, 16, -1)]
    return [*tags, "manylinux2014_aarch64", "linux_aarch64"]


def project_extras() -> list[str]:
    meta = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())
    have = meta["project"].get("optional-dependencies", {})
    if "litert" not in have:
        raise RuntimeError("pyproject.toml has no litert extra")
    return [e for e in EXTRAS if e in have]


def requirements(extras: Sequence[str]) -> list[str]:
    meta = tomllib.loads((CHECKOUT / "pyproject.toml").read_text())
    opt = meta["project"].get("optional-dependencies", {})
    return [*meta["project"]["dependencies"], *(r for e in extras for r in opt[e])]


def build_wheel(work: Path, log: Path) -> Path:
    """The project's wheel, from a copy of the files git knows (committed or not; in place,
    setuptools' build/ would leave stale files in the wheel)."""
    src = work / "src"
    src.mkdir()
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=CHECKOUT,
        capture_output=True,
        check=False,
    )
    if listed.returncode == 0:
        for name in listed.stdout.decode().split("\0"):
            path = CHECKOUT / name
            if name and path.is_file():  # tracked but deleted here: not in the copy
                (src / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, src / name)
    else:
        ignore = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__")
        shutil.copytree(CHECKOUT, src, ignore=ignore, dirs_exist_ok=True)
    dist = work / "dist"
    _run_logged(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist), str(src)],
        log,
        "building the wheel",
    )
    shutil.rmtree(src)
    (wheel,) = dist.glob("depin_gateway-*.whl")
    return wheel


def download_wheels(dest: Path, reqs: Sequence[str], glibc: str, python: str, log: Path) -> None:
    """The aarch64 wheels of `reqs`, resolved on the host for the root's Python and glibc with
    this machine's configured package sources (pip's cache keeps repeats cheap)."""
    abi = "cp" + python.replace(".", "")
    _run_logged(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--disable-pip-version-check",
            "-d",
            str(dest),
            "--only-binary=:all:",
            *(f"--platform={tag}" for tag in platform_tags(glibc)),
            f"--python-version={python}",
            "--implementation=cp",
            f"--abi={abi}",
            *reqs,
        ],
        log,
        "pip download of the aarch64 wheels (from the machine's configured package sources)",
    )


def cpuinfo(profile: Profile) -> str:
    """/proc/cpuinfo of that Pi, with as many cores as the host's /sys lists (which the root
    sees, and which CPU detection compares with this file)."""
    try:
        present = Path("/sys/devices/system/cpu/present").read_text().strip()
        cores = int(re.split(r"[-,]", present)[-1]) + 1
    except (OSError, ValueError):
        cores = os.cpu_count() or 1
    block = (
        "processor\t: {i}\nBogoMIPS\t: 108.00\nFeatures\t: {p.features}\nCPU implementer\t: 0x41\n"
        "CPU architecture: 8\nCPU variant\t: {p.variant}\nCPU part\t: {p.part}\n"
        "CPU revision\t: {p.revision}\n\n"
    )
    text = "".join(block.format(i=i, p=profile) for i in range(cores))
    return text + f"Serial\t\t: 0000000000000000\nModel\t\t: {profile.model}\n"


# --------------------------------------------------------------------------- fingerprint


def watched_files() -> list[Path]:
    found: set[Path] = set()
    for pattern in WATCHED:
        found.update(p for p in CHECKOUT.glob(pattern) if p.is_file())
    return sorted(found)


def fingerprint(settings: str) -> str:
    """sha256 over the watched files (names and contents), the root's recipe and `settings`."""
    h = hashlib.sha256()
    h.update(_stamp().encode())
    h.update(settings.encode() + b"\0")
    for pattern in WATCHED:  # a watched file that is gone counts as a change too
        h.update(pattern.encode() + b"\0")
    for path in watched_files():
        h.update(path.relative_to(CHECKOUT).as_posix().encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    return h.hexdigest()


def pass_record(fp: str) -> Path:
    """Where the PASS of fingerprint `fp` is kept (one file each: switching between two
    versions of the watched files needs no new run for either)."""
    return cache_dir() / "passes" / f"{fp}.json"


def record_pass(fp: str, doc: dict[str, object], keep_days: float) -> None:
    path = pass_record(fp)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"fingerprint": fp, **doc}, indent=1) + "\n")
    tmp.replace(path)
    for old in path.parent.glob("*.json"):  # those no --if-changed can use any more
        with contextlib.suppress(OSError):
            if time.time() - old.stat().st_mtime > keep_days * 86400:
                old.unlink()


def skip_reason(fp: str, max_age_days: float) -> str | None:
    """Why this run can be skipped (these files and settings passed here, recently), or
    None."""
    try:
        doc = json.loads(pass_record(fp).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("fingerprint") != fp:
        return None
    try:
        when = dt.datetime.fromisoformat(str(doc["when"]))
    except (KeyError, ValueError):
        return None
    age = dt.datetime.now(dt.UTC) - when
    if age > dt.timedelta(days=max_age_days) or age < dt.timedelta(0):
        return None
    return f"unchanged since its PASS {_ago(age)} ago (fingerprint {fp[:12]})"


def _ago(age: dt.timedelta) -> str:
    s = int(age.total_seconds())
    if s >= 86400:
        return f"{s // 86400} d {s % 86400 // 3600} h"
    if s >= 3600:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{s // 60} min"


def _duration(seconds: float) -> str:
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s} s" if m else f"{seconds:.1f} s"


# --------------------------------------------------------------------------- the root


class Overlay:
    """A throw-away view of the cached root (overlayfs, upper layer on a tmpfs) in which each
    command is one `systemd-nspawn` run: no boot, a private network, the Pi's CPU."""

    def __init__(self, work: Path, root: Path, profile: Profile, binds: dict[str, Path]) -> None:
        self.work = work
        self.lower = root
        self.profile = profile
        self.binds = binds
        self.scratch = work / "scratch"
        self.merged = work / "merged"

    def __enter__(self) -> Overlay:
        self.scratch.mkdir()
        self.merged.mkdir()
        try:
            nspawn.mount_overlay(self.lower, self.scratch, self.merged, name="depin-arm64-root")
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        nspawn.unmount(self.merged, self.scratch)

    def run(self, script: str, *, timeout: float, log: Path) -> tuple[int, str]:
        """`sh -ec script` in the root as root, in /root; (exit code, output). /proc/cpuinfo
        is the Pi's (see the module's docstring)."""
        cmd = [
            "systemd-nspawn",
            "--register=no",
            "--keep-unit",
            "--quiet",
            "--console=pipe",
            "--private-network",
            "--chdir=/root",
            f"--setenv=QEMU_CPU={self.profile.qemu_cpu}",
            "--setenv=LANG=C.UTF-8",
            "--setenv=PIP_NO_INDEX=1",
            "--setenv=PIP_FIND_LINKS=/wheels",
            "--setenv=PIP_DISABLE_PIP_VERSION_CHECK=1",
            "-D",
            str(self.merged),
            *(f"--bind-ro={src}:{dst}" for dst, src in self.binds.items()),
            "/bin/sh",
            "-ec",
            "mount --bind /smoke/cpuinfo /proc/cpuinfo\n" + script,
        ]
        with open(log, "ab") as out:
            out.write(f"\n$ {script}\n".encode())
            out.flush()
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
            try:
                data, _ = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.send_signal(signal.SIGTERM)
                try:
                    data, _ = proc.communicate(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    data, _ = proc.communicate()
                data += f"\n[timed out after {timeout:.0f} s]\n".encode()
                proc.returncode = 124
            out.write(data)
        text = "\n".join(
            line for line in data.decode(errors="replace").splitlines() if NOISE not in line
        )
        return proc.returncode, text


# --------------------------------------------------------------------------- the checks


@dataclass
class Step:
    name: str
    ok: bool | None = None  # None: not run
    seconds: float = 0.0
    detail: str = ""


@dataclass
class Report:
    steps: list[Step] = field(default_factory=list)
    out: TextIO = field(default_factory=lambda: sys.stdout)

    def say(self, text: str) -> None:
        print(f"arm64-smoke: {text}", file=self.out, flush=True)

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[Step]:
        st = Step(name)
        self.steps.append(st)
        started = time.monotonic()
        try:
            yield st
            if st.ok is None:
                st.ok = True
        except Exception as e:
            st.ok = False
            st.detail = (st.detail + "\n" if st.detail else "") + str(e)
        finally:
            st.seconds = time.monotonic() - started
            self.show(st)

    def skip(self, name: str, why: str) -> None:
        st = Step(name, None, 0.0, why)
        self.steps.append(st)
        self.show(st)

    def show(self, st: Step) -> None:
        verdict = {True: "ok  ", False: "FAIL", None: "skip"}[st.ok]
        first, *rest = (st.detail or "-").splitlines()
        self.say(f"{verdict}  {st.name:<28}{st.seconds:7.1f} s  {first}")
        for line in rest:
            self.say(f"{'':<44}{line}")

    @property
    def passed(self) -> bool:
        return all(st.ok for st in self.steps)


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.splitlines()[-lines:])


def _demo_verdict(rc: int, out: str) -> tuple[bool, str]:
    """(passed, what it said): exit 0 and the demo's own verdict that every acknowledged
    reading verified, with every reading acknowledged and nothing forged."""
    rows = dict(
        (m.group(1), m.group(2).strip())
        for m in re.finditer(r"^  (\w[\w ]*?)\s{2,}(.*)$", out, re.MULTILINE)
    )
    result = rows.get("result", "no result line")
    numbers = {
        k: int(m.group(1))
        for k in ("readings", "acknowledged", "verified", "forged")
        if (m := re.match(r"(\d+)", rows.get(k, "")))
    }
    said = (
        f"{numbers.get('readings', '?')} readings, {numbers.get('acknowledged', '?')} "
        f"acknowledged, {numbers.get('verified', '?')} verified, "
        f"{numbers.get('forged', '?')} forged: {result}"
    )
    ok = (
        rc == 0
        and result.startswith("OK: every acknowledged reading verified")
        and numbers.get("forged") == 0
        and numbers.get("readings", 0) > 0
        and numbers.get("readings") == numbers.get("acknowledged") == numbers.get("verified")
    )
    return ok, said


def run_smoke(args: argparse.Namespace, report: Report) -> None:
    profile = PROFILES[args.profile]
    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    log = cache / "last-run.log"
    log.write_text(f"arm64 smoke test of {CHECKOUT}, {dt.datetime.now(dt.UTC).isoformat()}\n")
    report.say(f"log: {log}")
    work = Path(tempfile.mkdtemp(prefix="depin-arm64-", dir=args.workdir))
    try:
        _run_steps(args, report, profile, work, log)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_steps(
    args: argparse.Namespace, report: Report, profile: Profile, work: Path, log: Path
) -> None:
    with report.step("binfmt_misc (qemu-aarch64)") as st:
        st.detail = ensure_binfmt()
    if not report.passed:
        return
    root = Path()
    with report.step("Debian root") as st:
        root, built = ensure_root(log)
        glibc, python = root_versions(root)
        st.detail = (
            f"{SUITE} {ARCH}, glibc {glibc}, Python {python}: "
            + ("built now" if built else "cached")
            + f" ({root})"
        )
    if not report.passed:
        return
    extras = project_extras()
    with report.step("wheel") as st:
        wheel = build_wheel(work, log)
        st.detail = f"{wheel.name} ({wheel.stat().st_size // 1024} KiB)"
    with report.step("aarch64 dependencies") as st:
        wheels = work / "wheels"
        download_wheels(wheels, requirements(extras), glibc, python, log)
        found = sorted(p.name for p in wheels.glob("*.whl"))
        native = [n for n in found if "aarch64" in n]
        st.detail = f"{len(found)} wheels for cp{python.replace('.', '')}, {len(native)} native:"
        st.detail += "\n" + ", ".join(n.split("-")[0] + " " + n.split("-")[1] for n in native)
    if not report.passed:
        return
    smoke = work / "smoke"
    smoke.mkdir()
    (smoke / "cpuinfo").write_text(cpuinfo(profile))
    shutil.copy(CHECKOUT / "tests" / "arm64_model.py", smoke / "model.py")
    shutil.copy(VECTORS, smoke / "vectors.json")
    binds = {"/smoke": smoke, "/dist": wheel.parent, "/wheels": wheels}
    with Overlay(work, root, profile, binds) as box:
        _in_root(box, report, wheel, extras, log, args)


def _in_root(
    box: Overlay,
    report: Report,
    wheel: Path,
    extras: Sequence[str],
    log: Path,
    args: argparse.Namespace,
) -> None:
    gw = f"{VENV}/bin/depin-gateway"

    with report.step("architecture") as st:
        rc, out = box.run(ARCH_SCRIPT, timeout=120, log=log)
        words = out.split()
        if rc != 0 or words[:3] != ["aarch64", "arm64", "aarch64"]:
            raise RuntimeError(f"not an aarch64 system (exit {rc}):\n{_tail(out)}")
        st.detail = (
            f"uname aarch64, dpkg arm64, Python {words[3]}; QEMU_CPU={box.profile.qemu_cpu} "
            f"({args.profile}, CPU part {words[-1]})"
        )
    if not report.passed:
        return

    spec = f"/dist/{wheel.name}[{','.join(extras)}]"
    with report.step(f"pip install [{','.join(extras)}]") as st:
        rc, out = box.run(
            f"python3 -m venv {VENV}\n{VENV}/bin/python -m pip install -q '{spec}'\n"
            f"{VENV}/bin/python -m pip list --format=freeze",
            timeout=1200,
            log=log,
        )
        if rc != 0:
            raise RuntimeError(f"exit {rc}:\n{_tail(out)}")
        have = dict(line.split("==", 1) for line in out.splitlines() if "==" in line)
        keys = ("depin-gateway", "ai-edge-litert", "tflite-runtime", "numpy", "amqtt")
        st.detail = ", ".join(f"{k} {have[k]}" for k in keys if k in have)
    if not report.passed:
        for name in (CHECK_SAMPLE, CHECK_MODEL, DEMO, MODEL):
            report.skip(name, "not run: nothing installed")
        return

    with report.step(CHECK_SAMPLE) as st:
        rc, out = box.run(
            f"{gw} config sample > sample.toml\n{gw} config check sample.toml >/dev/null",
            timeout=300,
            log=log,
        )
        if rc != 0:
            raise RuntimeError(f"exit {rc}:\n{_tail(out)}")
        st.detail = "the sample configuration checks"

    with report.step(CHECK_MODEL) as st:
        module = '[[module]]\nid = "temperature-model"\nkind = "tflite"\nmodel = "temperature-ae"'
        rc, out = box.run(
            f"{gw} config sample > model.toml\nprintf '\\n%s\\n' '{module}' >> model.toml\n"
            f"{gw} config check model.toml | grep -A3 'kind = \"tflite\"'",
            timeout=300,
            log=log,
        )
        if rc != 0:
            raise RuntimeError(f"exit {rc}:\n{_tail(out)}")
        st.detail = "the sample with the shipped model as a tflite module checks"

    with report.step(DEMO) as st:
        rc, out = box.run(
            f"{gw} demo --duration {DEMO_SECONDS}", timeout=DEMO_SECONDS + 300, log=log
        )
        ok, said = _demo_verdict(rc, out)
        st.detail = said
        if not ok:
            raise RuntimeError(f"exit {rc}:\n{_tail(out, 30)}")

    with report.step(MODEL) as st:
        rc, out = box.run(
            f"{VENV}/bin/python /smoke/model.py /smoke/vectors.json", timeout=300, log=log
        )
        if rc != 0:
            raise RuntimeError(f"exit {rc}:\n{_tail(out, 30)}")
        st.detail = out.strip()


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scripts/arm64-smoke",
        description="Install the wheel built from this checkout in an emulated Debian Bookworm "
        "arm64 root and run it there (see tests/arm64.py).",
    )
    parser.add_argument(
        "--if-changed",
        action="store_true",
        help="skip when the watched files and settings passed on this machine less than "
        "--max-age days ago; and skip instead of failing where it cannot run (not root), "
        "unless CI=true",
    )
    parser.add_argument("--max-age", type=float, default=7.0, metavar="DAYS", help="default 7")
    parser.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="pi4",
        help="the Pi whose CPU is emulated: pi4 (Cortex-A72, default) or pi5 (Cortex-A76)",
    )
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the run's files go (default: $TMPDIR)"
    )
    parser.add_argument("--show-watched", action="store_true", help="list the watched files")
    args = parser.parse_args(argv)

    if args.show_watched:
        for path in watched_files():
            print(path.relative_to(CHECKOUT))
        return 0
    started = time.monotonic()
    report = Report()
    fp = fingerprint(f"profile={args.profile}")
    if args.if_changed:
        why = skip_reason(fp, args.max_age)
        if why is not None:
            report.say(f"SKIP  {why}")
            return 0
    reason = unusable_reason()
    if reason is not None:
        if args.if_changed and os.environ.get("CI") != "true":
            # scripts/test of a developer without root: as the nspawn tests, skip (CI fails)
            report.say(f"SKIP  cannot run here: {reason}; run it as root to check")
            return 0
        report.say(f"FAIL  cannot run here: {reason}")
        return 1
    with _locked(cache_dir() / "run.lock"):
        try:
            run_smoke(args, report)
        except Exception as e:  # outside any step: still a clear FAIL
            report.say(f"FAIL  {type(e).__name__}: {e}")
            report.steps.append(Step("run", False))
    elapsed = time.monotonic() - started
    failed = [st.name for st in report.steps if st.ok is False]
    if report.passed and report.steps:
        doc: dict[str, object] = {
            "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "seconds": round(elapsed, 1),
            "checkout": str(CHECKOUT),
            "profile": args.profile,
            "steps": {st.name: st.detail for st in report.steps},
        }
        record_pass(fp, doc, keep_days=max(args.max_age, 30.0))
        report.say(
            f"PASS  {len(report.steps)} of {len(report.steps)} checks on emulated arm64 in "
            f"{_duration(elapsed)} (fingerprint {fp[:12]})"
        )
        return 0
    pass_record(fp).unlink(missing_ok=True)
    report.say(
        f"FAIL  {len(failed)} of {len(report.steps)} checks failed ({', '.join(failed)}) in "
        f"{_duration(elapsed)}; the log: {cache_dir() / 'last-run.log'}"
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
