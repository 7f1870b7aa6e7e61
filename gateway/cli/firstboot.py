"""Take over a configuration left on the boot partition (`depin-gateway firstboot`).

An owner without a screen or SSH writes `depin-gateway.toml` onto the SD card's boot partition
(FAT, readable on any PC) and starts the Pi. At boot, before the gateway, this:

- checks it exactly as the gateway would (relative paths taken from the configuration
  directory, where it will live);
- when it is good, puts it in place of `<etc>/gateway.toml` atomically (a temporary file in the
  same directory, fsync, rename; the replaced one kept as `gateway.toml.previous`), renames the
  boot copy to `depin-gateway.toml.applied` and removes an old errors file;
- when it is bad, leaves the boot copy and the configuration in use as they are and writes every
  problem, each with its line, to `depin-gateway-errors.txt` beside it (CRLF, so any editor on
  any PC shows it), and to stderr (the journal).

Running it again changes nothing: there is no boot copy any more, or the same problems are
found and the same errors file is already there.
"""

from __future__ import annotations

import argparse
import grp
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gateway.core.errors import ConfigError
from gateway.core.files import fsync_dir, write_atomic

BOOT_DIR = Path("/boot/firmware")
ETC_DIR = Path("/etc/depin-gateway")
BOOT_NAME = "depin-gateway.toml"
APPLIED_NAME = "depin-gateway.toml.applied"
ERRORS_NAME = "depin-gateway-errors.txt"
TARGET_NAME = "gateway.toml"
PREVIOUS_NAME = "gateway.toml.previous"
SERVICE_GROUP = "depin-gateway"
MAX_SIZE = 1024 * 1024
CONFIG_MODE = 0o640

Action = Literal["none", "applied", "unchanged", "rejected"]


@dataclass(frozen=True)
class Outcome:
    action: Action
    #: "file:line: key: message", one per problem (rejected only)
    problems: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 2 if self.action == "rejected" else 0


def _config_gid(target: Path) -> int | None:
    """The group that may read the configuration: the service's, else the current file's."""
    try:
        return grp.getgrnam(SERVICE_GROUP).gr_gid
    except KeyError:
        pass
    try:
        return target.stat().st_gid
    except OSError:
        return None


def check(text: str, *, source: str, etc: Path) -> list[str]:
    """Every problem in `text` as the gateway would find it once it lives in `etc`."""
    from gateway.config import settings as config

    try:
        config.loads(text, source=source, base_dir=etc)
    except ConfigError as e:
        return [p if p.startswith(source) else f"{source}: {p}" for p in e.problems]
    return []


def _read(boot_file: Path) -> tuple[str | None, list[str]]:
    try:
        data = boot_file.read_bytes()
    except OSError as e:
        return None, [f"{BOOT_NAME}: cannot read: {e.strerror or e}"]
    if len(data) > MAX_SIZE:
        return None, [f"{BOOT_NAME}: too big for a configuration ({len(data)} bytes)"]
    try:
        # utf-8-sig: an editor on a PC may have put a byte-order mark in front
        return data.decode("utf-8-sig"), []
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        return None, [
            f"{BOOT_NAME}:{line}: not valid UTF-8 (byte {e.start}); save the file as UTF-8"
        ]


def _errors_text(problems: list[str]) -> bytes:
    lines = [
        f"depin-gateway: the configuration in {BOOT_NAME} on this card was NOT applied.",
        "The gateway goes on with the configuration it had before.",
        f"Fix what is listed below in {BOOT_NAME}, save it and start the Pi again;",
        "this file goes away once the configuration has been taken over.",
        "",
        *problems,
        "",
    ]
    return "\r\n".join(lines).encode("utf-8")


def _reject(boot: Path, problems: list[str]) -> Outcome:
    errors = boot / ERRORS_NAME
    text = _errors_text(problems)
    try:
        if not errors.exists() or errors.read_bytes() != text:
            write_atomic(errors, text, mode=0o644, gid=None)
    except OSError as e:
        problems = [*problems, f"{errors}: cannot write the errors file: {e.strerror or e}"]
    return Outcome("rejected", problems)


def take_over(boot: Path = BOOT_DIR, etc: Path = ETC_DIR) -> Outcome:
    """Apply `boot/depin-gateway.toml` to `etc/gateway.toml` when it is good (see the module)."""
    boot_file = boot / BOOT_NAME
    if not boot_file.exists():
        return Outcome("none")
    text, problems = _read(boot_file)
    if text is None:
        return _reject(boot, problems)
    problems = check(text, source=BOOT_NAME, etc=etc)
    if problems:
        return _reject(boot, problems)

    target = etc / TARGET_NAME
    data = text.encode("utf-8")
    try:
        current = target.read_bytes() if target.exists() else None
        if current == data:
            action: Action = "unchanged"
        else:
            etc.mkdir(parents=True, exist_ok=True)
            gid = _config_gid(target)
            if current is not None:
                write_atomic(etc / PREVIOUS_NAME, current, mode=CONFIG_MODE, gid=gid)
            write_atomic(target, data, mode=CONFIG_MODE, gid=gid)
            action = "applied"
    except OSError as e:
        where = e.filename or etc
        return _reject(boot, [f"{where}: cannot install the configuration: {e.strerror or e}"])

    # Only now, with the new configuration durable, does the boot copy go.
    os.replace(boot_file, boot / APPLIED_NAME)
    (boot / ERRORS_NAME).unlink(missing_ok=True)
    fsync_dir(boot)
    return Outcome(action)


def main(boot: Path = BOOT_DIR, etc: Path = ETC_DIR) -> int:
    outcome = take_over(boot, etc)
    boot_file = boot / BOOT_NAME
    target = etc / TARGET_NAME
    if outcome.action == "none":
        print(f"depin-gateway firstboot: no {boot_file}, nothing to take over")
    elif outcome.action == "applied":
        print(f"depin-gateway firstboot: {boot_file} checked and installed as {target}")
    elif outcome.action == "unchanged":
        print(f"depin-gateway firstboot: {boot_file} is already {target}")
    else:
        for line in outcome.problems:
            print(line, file=sys.stderr)
        print(
            f"depin-gateway firstboot: {boot_file} NOT applied "
            f"({len(outcome.problems)} problem(s), listed in {boot / ERRORS_NAME}); "
            f"{target} is unchanged",
            file=sys.stderr,
        )
    return outcome.exit_code


def cmd_firstboot(args: argparse.Namespace) -> int:
    return main(Path(args.boot), Path(args.etc))


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register `depin-gateway firstboot` on the CLI's subparsers."""
    p: argparse.ArgumentParser = sub.add_parser(
        "firstboot",
        help="take over a configuration left on the boot partition (run at boot by systemd)",
    )
    p.add_argument(
        "--boot",
        default=str(BOOT_DIR),
        metavar="DIR",
        help=f"where to look for {BOOT_NAME} (default {BOOT_DIR})",
    )
    p.add_argument(
        "--etc",
        default=str(ETC_DIR),
        metavar="DIR",
        help=f"the configuration directory to install it into (default {ETC_DIR})",
    )
    p.set_defaults(fn=cmd_firstboot)
    return p
