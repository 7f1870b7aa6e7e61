"""`depin-gateway dashboard --broker URL`: the fleet dashboard (docs/dashboard.md)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from gateway.core.errors import ConfigError, GatewayError


def _password(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text().rstrip("\r\n")
    except OSError as e:
        raise ConfigError([f"--password-file {path}: {e.strerror or e}"]) from None


def _attestors(entries: list[str] | tuple[str, ...]) -> list[str]:
    """--attestor: did:key or bare ids, as dids; a ConfigError naming every bad one."""
    from gateway.wire.verify import normalise_did

    good, bad = [], []
    for entry in entries:
        try:
            good.append(normalise_did(entry.strip()))
        except ValueError:
            bad.append(f"--attestor {entry!r}: not an Ed25519 did:key or device id")
    if bad:
        raise ConfigError(bad)
    return good


async def _serve(args: argparse.Namespace) -> None:
    from gateway.dashboard import server, subscriber
    from gateway.dashboard.model import Fleet

    try:
        host, port = server.parse_listen(args.listen)
    except ValueError as e:
        raise ConfigError([str(e)]) from None
    if args.password_file is not None and args.username is None:
        raise ConfigError(["--password-file needs --username"])
    ca_file = None if args.ca_file is None else Path(args.ca_file)
    if ca_file is not None and not ca_file.is_file():
        raise ConfigError([f"--ca-file {ca_file}: no such file"])
    broker = subscriber.parse_broker(
        args.broker,
        username=args.username,
        password=_password(args.password_file),
        ca_file=ca_file,
    )
    fleet = Fleet(args.prefix, attestors=_attestors(args.attestor or ()))

    def ready(url: str) -> None:
        print(f"dashboard: {url} (broker {broker.label}, prefix {fleet.prefix})", flush=True)

    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
    try:
        await server.run(fleet, broker, host, port, ready=ready)
    except OSError as e:
        raise GatewayError(f"cannot listen on {args.listen}: {e.strerror or e}") from None


def cmd_dashboard(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("gateway").setLevel(getattr(logging, args.log_level.upper()))
    with contextlib.suppress(asyncio.CancelledError):  # SIGINT / SIGTERM end it
        asyncio.run(_serve(args))
    return 0


def add_parser(sub: Any) -> None:
    d = sub.add_parser(
        "dashboard",
        help="serve a live web page of every gateway on a broker",
        description="Subscribe to the broker and serve a single live page showing every gateway "
        "under the prefix: values with sparklines of the last hour, anomaly flags, queue and "
        "uplink, chain position, the latest attestation. See docs/dashboard.md.",
    )
    d.add_argument("--broker", required=True, metavar="URL", help="mqtt://host[:port] or mqtts://")
    d.add_argument(
        "--listen",
        default="127.0.0.1:8080",
        metavar="HOST:PORT",
        help="where the page is served (default 127.0.0.1:8080; port 0 picks a free one)",
    )
    d.add_argument("--prefix", default="depin/v1", help="topic prefix (default depin/v1)")
    d.add_argument("--username", help="broker user name")
    d.add_argument(
        "--password-file", metavar="FILE", help="file holding the broker password (one line)"
    )
    d.add_argument("--ca-file", metavar="FILE", help="CA certificate(s) for mqtts:// (implies TLS)")
    d.add_argument(
        "--attestor",
        action="append",
        metavar="DID",
        help="trust attestations signed by this attestor (did:key or device id; repeatable). "
        "Without it no attestation is shown as verified: a good signature by an attestor not "
        "named here shows as 'not trusted'",
    )
    d.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="least severe level logged (default info)",
    )
    d.set_defaults(fn=cmd_dashboard)
