"""The parts of scripts/arm64-smoke (tests/arm64.py) that decide without emulating anything:
when a run may be skipped, which wheels a Pi's pip takes, how the demo's verdict is read, the
binfmt_misc handler it looks for and the Pi's /proc/cpuinfo. The emulated run itself is the
script's (several minutes; see its header)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import stat
from pathlib import Path

import pytest

from tests import arm64

DEMO_OK = """\
t=20s readings 229 | sealed 13 | acked 13 | verified 229 in 13 batches | flagged 9 | forged 0

depin-gateway demo summary
  device        did:key:z6MkhVyD3WkkE5118ocNYJoY3Nfwqd3oV4bSQdcczUZexY6s
  ran           20.0 s
  readings      229
  flagged       9 (by the modules; fault injected: range on outdoor)
  sealed        13 batches
  acknowledged  229 readings in 13 batches
  verified      229 readings in 13 batches
  forged        0
  births        1
  result        OK: every acknowledged reading verified
"""


def test_the_demo_passes_only_when_every_reading_is_acknowledged_and_verified() -> None:
    ok, said = arm64._demo_verdict(0, DEMO_OK)
    assert ok, said
    assert said.startswith("229 readings, 229 acknowledged, 229 verified, 0 forged: OK")
    assert not arm64._demo_verdict(1, DEMO_OK)[0]
    partial = DEMO_OK.replace("verified      229", "verified      200").replace(
        "OK: every acknowledged reading verified",
        "OK, but 29 acknowledged readings did not reach the verifier",
    )
    assert not arm64._demo_verdict(0, partial)[0]
    unsent = DEMO_OK.replace("acknowledged  229", "acknowledged  220").replace(
        "verified      229", "verified      220"
    )
    assert not arm64._demo_verdict(0, unsent)[0]
    forged = DEMO_OK.replace("forged        0", "forged        1").replace(
        "OK: every acknowledged reading verified", "FAILED: forged batches"
    )
    assert not arm64._demo_verdict(1, forged)[0]
    assert not arm64._demo_verdict(0, "Traceback (most recent call last):\n")[0]


def test_platform_tags_are_every_manylinux_a_pi_takes_newest_first() -> None:
    tags = arm64.platform_tags("2.36")
    assert tags[0] == "manylinux_2_36_aarch64"
    assert tags[19] == "manylinux_2_17_aarch64"
    assert tags[20:] == ["manylinux2014_aarch64", "linux_aarch64"]
    assert len(set(tags)) == len(tags) == 22


def test_watched_files_cover_the_runtime_the_model_and_the_script() -> None:
    names = {p.relative_to(arm64.CHECKOUT).as_posix() for p in arm64.watched_files()}
    for name in (
        "pyproject.toml",
        "gateway/modules/tflite.py",
        "gateway/modules/litert.py",
        "models/temperature-ae.tflite",
        "models/temperature-ae.json",
        "scripts/install.sh",
        "scripts/arm64-smoke",
        "tests/arm64.py",
        "tests/arm64_model.py",
        "tests/vectors/tflite/temperature-ae.json",
    ):
        assert name in names
    assert (arm64.CHECKOUT / "scripts/arm64-smoke").stat().st_mode & stat.S_IXUSR


@pytest.fixture
def checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the watched files, as the module's checkout, and an empty cache."""
    copy = tmp_path / "checkout"
    for path in arm64.watched_files():
        dest = copy / path.relative_to(arm64.CHECKOUT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, dest)
    monkeypatch.setattr(arm64, "CHECKOUT", copy)
    monkeypatch.setenv("DEPIN_ARM64_CACHE", str(tmp_path / "cache"))
    (tmp_path / "cache").mkdir()
    return copy


def _passed(fp: str, *, days_ago: float = 0.0) -> None:
    when = dt.datetime.now(dt.UTC) - dt.timedelta(days=days_ago)
    doc = {"fingerprint": fp, "when": when.isoformat(timespec="seconds")}
    arm64.pass_record(fp).parent.mkdir(exist_ok=True)
    arm64.pass_record(fp).write_text(json.dumps(doc))


def test_a_run_is_skipped_only_after_a_recent_pass_of_the_same_files(checkout: Path) -> None:
    fp = arm64.fingerprint("profile=pi4")
    assert arm64.skip_reason(fp, 7) is None  # a fresh machine: no PASS yet
    _passed(fp)
    assert "unchanged since its PASS" in (arm64.skip_reason(fp, 7) or "")
    assert arm64.fingerprint("profile=pi5") != fp  # another setting is another run
    _passed(fp, days_ago=8)
    assert arm64.skip_reason(fp, 7) is None  # too old: upstream wheels may have moved
    _passed(fp)

    litert = checkout / "gateway/modules/litert.py"
    litert.write_text(litert.read_text() + "\n# changed\n")
    assert arm64.fingerprint("profile=pi4") != fp
    assert arm64.skip_reason(arm64.fingerprint("profile=pi4"), 7) is None

    litert.write_text(litert.read_text().removesuffix("\n# changed\n"))
    assert arm64.fingerprint("profile=pi4") == fp  # content, not times
    os.utime(litert, (0, 0))
    assert arm64.fingerprint("profile=pi4") == fp

    (checkout / "models/temperature-ae.tflite").rename(checkout / "models/other.tflite")
    assert arm64.fingerprint("profile=pi4") != fp  # a renamed model is a change
    (checkout / "models/other.tflite").unlink()
    assert arm64.fingerprint("profile=pi4") != fp  # and so is a removed one

    arm64.pass_record(fp).write_text("{not json")
    assert arm64.skip_reason(fp, 7) is None


def test_passes_are_kept_per_fingerprint(checkout: Path) -> None:
    arm64.record_pass("a" * 64, {"when": dt.datetime.now(dt.UTC).isoformat()}, keep_days=30)
    arm64.record_pass("b" * 64, {"when": dt.datetime.now(dt.UTC).isoformat()}, keep_days=30)
    assert arm64.skip_reason("a" * 64, 7) and arm64.skip_reason("b" * 64, 7)
    old = arm64.pass_record("a" * 64)
    os.utime(old, (0, 0))
    arm64.record_pass("c" * 64, {"when": dt.datetime.now(dt.UTC).isoformat()}, keep_days=30)
    assert not old.exists()  # pruned: no --if-changed could use it
    assert arm64.skip_reason("b" * 64, 7)


def test_the_aarch64_binfmt_handler_is_recognised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(arm64, "BINFMT", tmp_path)
    (tmp_path / "register").write_text("")
    (tmp_path / "status").write_text("enabled\n")
    (tmp_path / "python3.11").write_text(
        "enabled\ninterpreter /usr/bin/python3.11\nflags: \nmagic a70d0d0a\n"
    )
    assert arm64.aarch64_handler() is None
    (tmp_path / "qemu-aarch64").write_text(
        "disabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: POF\noffset 0\n"
        f"magic {arm64.AARCH64_MAGIC}\nmask ffffffffffffff00fffffffffffffffffeffffff\n"
    )
    assert arm64.aarch64_handler() is None  # disabled
    text = (tmp_path / "qemu-aarch64").read_text().replace("disabled", "enabled")
    (tmp_path / "qemu-aarch64").write_text(text)
    handler = arm64.aarch64_handler()
    assert handler == arm64.Handler(
        "qemu-aarch64", "/usr/libexec/qemu-binfmt/aarch64-binfmt-P", "POF"
    )


@pytest.mark.parametrize("profile", sorted(arm64.PROFILES))
def test_cpuinfo_describes_the_pi_with_the_hosts_cores(profile: str) -> None:
    p = arm64.PROFILES[profile]
    text = arm64.cpuinfo(p)
    cores = text.count("processor\t:")
    assert cores >= 1
    assert text.count(f"CPU part\t: {p.part}") == cores
    assert f"Model\t\t: {p.model}" in text
    assert p.qemu_cpu in ("cortex-a72", "cortex-a76")
