"""scripts/install.sh and the shipped units under a real systemd (see tests/nspawn.py).

One container for the module, booted from the cached Debian root on a fresh overlay, with a fake
boot partition (config.txt, cmdline.txt) so the I2C/UART edits are exercised too. The tests run
in file order on that one system: install, READY, the sandbox, the boot-partition configuration,
a second install, the watchdog, uninstall. About a minute once the root is cached; the first run
builds it (debootstrap, a few minutes).

In CI (CI=true) a missing debootstrap or systemd-nspawn fails the tests instead of skipping them:
scripts/test installs `debootstrap systemd-container` there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest

from tests import nspawn

ETC = "/etc/depin-gateway"
STATE = "/var/lib/depin-gateway"
UNIT = "depin-gateway.service"
VENV_BIN = "/opt/depin-gateway/venv/bin"
CREDS = "/run/credentials/depin-gateway.service"
PIP_ENV = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/wheels", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}

CONFIG_TXT = """\
# For more options and information see http://rptl.io/configtxt
#dtparam=i2c_arm=on
#dtparam=spi=on
dtparam=audio=on
camera_auto_detect=1
auto_initramfs=1
arm_64bit=1

[cm4]
otg_mode=1

[pi4]
arm_boost=1
"""
CMDLINE_TXT = (
    "console=serial0,115200 console=tty1 root=PARTUUID=1a2b3c4d-02 rootfstype=ext4 "
    "fsck.repair=yes rootwait quiet splash\n"
)

#: what install.sh touches, listed with type, mode and owner (and a digest outside the venv)
LISTING = r"""
set -e
for p in /opt/depin-gateway /etc/depin-gateway /usr/local/lib/systemd/system \
         /etc/udev/rules.d/99-depin-gateway.rules /etc/modules-load.d/depin-gateway.conf \
         /etc/systemd/system /var/lib/depin-gateway /boot/firmware; do
  find "$p" -path /var/lib/depin-gateway/'*' -prune -o -path '*/__pycache__' -prune -o \
       -printf '%p %y %m %u %g %l\n'
done | sort
find /etc/depin-gateway /usr/local/lib/systemd/system /etc/udev/rules.d /etc/modules-load.d \
     /boot/firmware /opt/depin-gateway/docs -type f -exec sha256sum {} + | sort
getent passwd depin-gateway
getent group depin-gateway dialout i2c
"""


@pytest.fixture(scope="module")
def pi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[nspawn.Container]:
    reason = nspawn.unusable_reason()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the systemd tests cannot run: {reason}")
        pytest.skip(reason)
    work = tmp_path_factory.mktemp("nspawn")
    started = time.monotonic()
    root = nspawn.ensure_root(work / "debootstrap.log")
    wheels = nspawn.ensure_wheels(work / "wheels.log")
    prepared = time.monotonic()
    with nspawn.Container(
        workdir=work, root=root, binds=[(nspawn.CHECKOUT, "/src"), (wheels, "/wheels")]
    ) as c:
        c.run("mkdir", "-p", "/boot/firmware")
        c.run("tee", "/boot/firmware/config.txt", input=CONFIG_TXT)
        c.run("tee", "/boot/firmware/cmdline.txt", input=CMDLINE_TXT)
        res = c.run("/src/scripts/install.sh", env=PIP_ENV, timeout=400)
        c.notes["install"] = res.stdout + res.stderr
        print(
            f"root and wheels ready in {prepared - started:.1f} s, "
            f"booted and installed in {time.monotonic() - prepared:.1f} s"
        )
        yield c


def _active(c: nspawn.Container) -> dict[str, str]:
    props = ("ActiveState", "SubState", "MainPID", "NRestarts", "StatusText", "Result")
    return c.show(UNIT, *props)


def _wait_active(c: nspawn.Container, timeout: float = 60) -> dict[str, str]:
    def ready() -> bool:
        return _active(c)["ActiveState"] == "active"

    try:
        c.wait_for(f"{UNIT} to become active", ready, timeout=timeout)
    except AssertionError:
        raise AssertionError(f"{_active(c)}\n{c.journal(UNIT)[-4000:]}") from None
    return _active(c)


def _as_service(c: nspawn.Container, script: str, *, root: bool = False) -> tuple[int, str]:
    """Run `script` in the service's mount namespace with its uid and gid (or as root there:
    then only the mounts can refuse a write)."""
    pid = _active(c)["MainPID"]
    ids: list[str] = []
    if not root:
        uid = c.run("id", "-u", "depin-gateway").stdout.strip()
        gid = c.run("id", "-g", "depin-gateway").stdout.strip()
        ids = ["-S", uid, "-G", gid]
    res = c.run("nsenter", "-t", pid, "-m", *ids, "--", "/bin/sh", "-c", script, check=False)
    return res.returncode, res.stdout + res.stderr


def test_install_reports_the_identity_and_sets_up_i2c_and_uart(pi: nspawn.Container) -> None:
    out = pi.notes["install"]
    assert "did:       did:key:z6Mk" in out
    assert "reboot to apply" in out
    config_txt = pi.run("cat", "/boot/firmware/config.txt").stdout
    assert config_txt.startswith(CONFIG_TXT.rstrip("\n"))
    block = config_txt[len(CONFIG_TXT.rstrip("\n")) :]
    assert "[all]\ndtparam=i2c_arm=on\nenable_uart=1\n" in block
    cmdline = pi.run("cat", "/boot/firmware/cmdline.txt").stdout
    assert cmdline == (
        "console=tty1 root=PARTUUID=1a2b3c4d-02 rootfstype=ext4 fsck.repair=yes rootwait "
        "quiet splash\n"
    )
    key = pi.run("stat", "-c", "%a %U %G", f"{ETC}/device.key").stdout.split()
    assert key == ["600", "root", "root"]
    conf = pi.run("stat", "-c", "%a %U %G", f"{ETC}/gateway.toml").stdout.split()
    assert conf == ["640", "root", "depin-gateway"]
    check = pi.run(f"{VENV_BIN}/depin-gateway", "config", "check", f"{ETC}/gateway.toml").stdout
    assert f'key_file = "{ETC}/device.key"' in check
    assert f'path = "{STATE}/spool.db"' in check


def test_installed_units_verify_cleanly(pi: nspawn.Container) -> None:
    res = pi.run(
        "systemd-analyze",
        "verify",
        *(f"/usr/local/lib/systemd/system/{u}" for u in nspawn.UNITS),
    )
    assert res.stdout + res.stderr == ""


def test_service_is_active_after_ready_as_its_own_user(pi: nspawn.Container) -> None:
    props = _wait_active(pi)
    assert props["SubState"] == "running"
    # Type=notify: active only once the daemon said READY=1, with a STATUS= line beside it
    assert pi.show(UNIT, "Type", "NotifyAccess", "WatchdogUSec") == {
        "Type": "notify",
        "NotifyAccess": "main",
        "WatchdogUSec": "30s",
    }
    assert props["StatusText"], "READY=1 came without a STATUS= line"
    pid = props["MainPID"]
    status = pi.run("cat", f"/proc/{pid}/status").stdout
    uid = pi.run("id", "-u", "depin-gateway").stdout.strip()
    groups = {pi.run("getent", "group", g).stdout.split(":")[2] for g in ("dialout", "i2c")}
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid_line.split()[1:] == [uid] * 4
    groups_line = next(line for line in status.splitlines() if line.startswith("Groups:"))
    assert groups <= set(groups_line.split()[1:])
    cap_line = next(line for line in status.splitlines() if line.startswith("CapBnd:"))
    assert int(cap_line.split()[1], 16) == 0
    # status.json in the runtime directory (tmpfs)
    pi.wait_for(
        "status.json",
        lambda: pi.run("test", "-s", "/run/depin-gateway/status.json", check=False).returncode == 0,
        timeout=30,
    )


def test_etc_is_read_only_and_the_state_directory_writable(pi: nspawn.Container) -> None:
    for path in (f"{ETC}/probe", "/etc/probe", "/usr/local/probe", "/root/probe"):
        rc, out = _as_service(pi, f"touch {path}", root=True)
        assert rc != 0 and ("Read-only file system" in out or "No such file" in out), out
    rc, out = _as_service(pi, f"touch {ETC}/probe")
    assert rc != 0, out
    rc, out = _as_service(pi, f"touch {STATE}/probe && rm {STATE}/probe && ls {STATE}")
    assert rc == 0, out
    assert "spool.db" in out
    assert pi.run("stat", "-c", "%a %U", STATE).stdout.split() == ["700", "depin-gateway"]


def test_the_key_is_readable_only_through_its_credential(pi: nspawn.Container) -> None:
    rc, out = _as_service(pi, f"cat {ETC}/device.key")
    assert rc != 0 and "Permission denied" in out, out
    rc, out = _as_service(pi, f"cat {CREDS}/device.key")
    assert rc == 0, out
    assert out == pi.run("cat", f"{ETC}/device.key").stdout
    assert "BEGIN PRIVATE KEY" in out
    environ = pi.run("cat", f"/proc/{_active(pi)['MainPID']}/environ").stdout.split("\0")
    assert f"CREDENTIALS_DIRECTORY={CREDS}" in environ
    # the daemon signs with that key: the same did as install.sh printed
    did = pi.run(f"{VENV_BIN}/depin-gateway", "identity", "show", "--key", f"{ETC}/device.key")
    assert did.stdout.splitlines()[1] in pi.notes["install"]


def test_udev_rules_parse(pi: nspawn.Container) -> None:
    res = pi.run("udevadm", "test", "--action=add", "/sys/class/tty/tty0", check=False)
    text = res.stdout + res.stderr
    assert "99-depin-gateway.rules" in text
    bad = [
        line
        for line in text.splitlines()
        if "99-depin-gateway.rules" in line
        and ("invalid" in line.lower() or "error" in line.lower() or "unknown" in line.lower())
    ]
    assert bad == []


GOOD = """\
[device]
name = "from-the-boot-partition"
key_file = "/etc/depin-gateway/device.key"

[spool]
path = "/var/lib/depin-gateway/spool.db"
commit_interval = "30 s"

[clock]
mode = "auto"

[[sensor]]
id = "climate"
driver = "simulated"
interval = "2 s"
kind = "climate"
seed = 7
"""

BAD = GOOD.replace('interval = "2 s"', 'intervall = "2 s"')


def test_firstboot_takes_over_a_good_config(pi: nspawn.Container) -> None:
    pi.run("tee", "/boot/firmware/depin-gateway.toml", input=GOOD)
    pi.run("systemctl", "restart", UNIT)
    assert pi.run("cat", f"{ETC}/gateway.toml").stdout == GOOD
    assert pi.run("cat", "/boot/firmware/depin-gateway.toml.applied").stdout == GOOD
    assert pi.run("test", "-e", "/boot/firmware/depin-gateway.toml", check=False).returncode
    assert pi.run("stat", "-c", "%a %U %G", f"{ETC}/gateway.toml").stdout.split() == [
        "640",
        "root",
        "depin-gateway",
    ]
    assert "installed as /etc/depin-gateway/gateway.toml" in pi.journal(
        "depin-gateway-firstboot.service"
    )
    _wait_active(pi)


def test_firstboot_reports_a_bad_config_and_keeps_the_old(pi: nspawn.Container) -> None:
    pi.run("tee", "/boot/firmware/depin-gateway.toml", input=BAD)
    pi.run("systemctl", "restart", UNIT)
    errors = pi.run("cat", "/boot/firmware/depin-gateway-errors.txt").stdout
    line = BAD.splitlines().index('intervall = "2 s"') + 1
    assert f"depin-gateway.toml:{line}: sensor[0].intervall" in errors
    crs = pi.sh("tr -dc '\\r' </boot/firmware/depin-gateway-errors.txt | wc -c").stdout
    assert int(crs) == errors.count("\n"), "CRLF line ends, for Notepad"
    assert pi.run("cat", f"{ETC}/gateway.toml").stdout == GOOD
    assert pi.run("cat", "/boot/firmware/depin-gateway.toml").stdout == BAD
    assert pi.run("systemctl", "is-failed", "depin-gateway-firstboot", check=False).stdout == (
        "failed\n"
    )
    assert f"depin-gateway.toml:{line}:" in pi.journal("depin-gateway-firstboot.service")
    _wait_active(pi)  # on the previous configuration
    pi.run("rm", "/boot/firmware/depin-gateway.toml", "/boot/firmware/depin-gateway-errors.txt")
    pi.run("systemctl", "reset-failed", "depin-gateway-firstboot.service")


def test_install_twice_leaves_the_same_system(pi: nspawn.Container) -> None:
    before = pi.sh(LISTING).stdout
    res = pi.run("/src/scripts/install.sh", env=PIP_ENV, timeout=400)
    assert "reboot to apply" not in res.stderr
    after = pi.sh(LISTING).stdout
    assert after == before
    assert f"{ETC}/gateway.toml.previous" in after  # the firstboot test's, still there
    _wait_active(pi)


def test_watchdog_restarts_a_hung_gateway(pi: nspawn.Container) -> None:
    props = _wait_active(pi)
    pid, restarts = props["MainPID"], int(props["NRestarts"])
    pi.run("kill", "-STOP", pid)  # nothing pings any more: an honest hang
    started = time.monotonic()

    def restarted() -> bool:
        now = _active(pi)
        return (
            int(now["NRestarts"]) > restarts
            and now["ActiveState"] == "active"
            and now["MainPID"] not in ("0", pid)
        )

    pi.wait_for("the watchdog to restart the gateway", restarted, timeout=90, interval=1)
    took = time.monotonic() - started
    assert 25 < took < 80, took
    assert "Watchdog timeout" in pi.journal(UNIT)


def test_uninstall_keeps_key_and_spool_unless_purged(pi: nspawn.Container) -> None:
    key = pi.run("cat", f"{ETC}/device.key").stdout
    pi.run("/src/scripts/uninstall.sh")
    assert pi.run("test", "-e", "/opt/depin-gateway", check=False).returncode == 1
    assert pi.run("test", "-e", f"/usr/local/lib/systemd/system/{UNIT}", check=False).returncode
    assert pi.run("test", "-e", "/etc/udev/rules.d/99-depin-gateway.rules", check=False).returncode
    assert pi.run("systemctl", "is-active", UNIT, check=False).stdout.strip() != "active"
    assert pi.run("cat", f"{ETC}/device.key").stdout == key
    assert pi.run("test", "-s", f"{STATE}/spool.db", check=False).returncode == 0
    pi.run("/src/scripts/uninstall.sh")  # again: nothing left to do, no error
    pi.run("/src/scripts/uninstall.sh", "--purge")
    for path in (ETC, STATE):
        assert pi.run("test", "-e", path, check=False).returncode == 1
    assert pi.run("getent", "passwd", "depin-gateway", check=False).returncode == 2


def test_an_image_gets_its_key_at_first_start(pi: nspawn.Container) -> None:
    # as for an SD card image copied to many devices: no key until the device first starts
    res = pi.run("/src/scripts/install.sh", "--no-keygen", "--no-start", env=PIP_ENV, timeout=400)
    assert "no device key yet" in res.stderr
    assert pi.run("test", "-e", f"{ETC}/device.key", check=False).returncode == 1
    pi.run("systemctl", "start", UNIT)
    _wait_active(pi)
    assert pi.run("stat", "-c", "%a %U", f"{ETC}/device.key").stdout.split() == ["600", "root"]
    assert "did:       did:key:z6Mk" in pi.journal("depin-gateway-keygen.service")
    # from now on the keygen unit is skipped: its condition no longer holds
    pi.run("systemctl", "restart", UNIT)
    assert pi.show("depin-gateway-keygen.service", "ConditionResult") == {"ConditionResult": "no"}
