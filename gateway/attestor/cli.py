"""`depin-gateway attestor …`: run, register, devices, report, sample."""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import io
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SAMPLE = """\
# depin-gateway attestor: verifies batches, keeps chains, signs epoch attestations.
[attestor]
key_file = "attestor.key"            # depin-gateway keygen --key attestor.key
store = "attestor.db"                # or "postgresql://attestor@db.example/attestor"
workers = 1                          # more than one needs a postgresql:// store
epoch = "1 h"
grace = "5 min"                      # late batches are waited for this long after an epoch

[broker]
url = "mqtt://127.0.0.1:1883"
topic_prefix = "depin/v1"
"""


def _config(args: argparse.Namespace) -> Any:
    from gateway.attestor import config

    return config.load(Path(args.config))


def _db(args: argparse.Namespace) -> Any:
    from gateway.attestor.db import Database

    return Database(_config(args).store)


def cmd_run(args: argparse.Namespace) -> int:
    from gateway.attestor import service

    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return service.run(_config(args), worker=args.worker)


def cmd_register(args: argparse.Namespace) -> int:
    from gateway.attestor import registry

    db = _db(args)
    try:
        did, new = registry.register(db, args.did, args.name)
    finally:
        db.close()
    print(f"{'registered' if new else 'renamed'} {did} as {args.name!r}")
    return 0


def _iso(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _emit(rows: list[dict[str, Any]], columns: Sequence[str], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(rows, indent=2))
    elif fmt == "csv":
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
        sys.stdout.write(buf.getvalue())
    else:
        cells = [[str(r.get(c, "")) for c in columns] for r in rows]
        widths = [max([len(c), *(len(row[i]) for row in cells)]) for i, c in enumerate(columns)]
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
        for row in cells:
            print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())


def cmd_devices(args: argparse.Namespace) -> int:
    from gateway.attestor import registry
    from gateway.wire.verify import ACCEPTED

    db = _db(args)
    try:
        rows = registry.devices(db)
        counts = registry.counts(db)
    finally:
        db.close()
    # What a device's own topics may carry without counting as rejected (an attestation not).
    good = ACCEPTED - {"attestation"}
    for r in rows:
        r["registered"] = _iso(r["registered"])
        bad = {k: n for k, n in counts.get(r["did"], {}).items() if k not in good}
        r["rejected"] = sum(bad.values())
    cols = ("name", "did", "registered", "last_seq", "batches", "readings", "evidence", "rejected")
    _emit(rows, cols, args.format)
    unknown = counts.get("", {})
    if unknown and args.format == "table":
        print(f"from unregistered or unproven senders: {json.dumps(unknown, sort_keys=True)}")
    return 0


def _epoch_arg(text: str) -> int:
    try:
        return int(float(text))
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither Unix seconds nor an ISO time like 2026-11-25T10:00:00Z"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return int(when.timestamp())


def cmd_report(args: argparse.Namespace) -> int:
    from gateway.attestor import registry
    from gateway.attestor.epochs import attested_synced, epoch_of
    from gateway.wire.score import explain

    cfg = _config(args)
    from gateway.attestor.db import Database

    db = Database(cfg.store)
    try:
        epoch = None if args.epoch is None else epoch_of(args.epoch, cfg.epoch_seconds)
        did = None if args.device is None else registry.normalise_did(args.device)
        rows = registry.attestations(db, epoch=epoch, did=did)
        for r in rows:
            # Not kept with the attestation (nor signed in it): found again in the store.
            r["synced"] = attested_synced(
                db, r["did"], r["epoch_start"], r["epoch_end"], r["verified"],
                bytes.fromhex(r["root"]),
            )  # fmt: skip
    finally:
        db.close()
    for r in rows:
        r["epoch"] = _iso(r["epoch_start"])
        # The factors beside the score say what it is made of; `why` says which of them cost,
        # so that a 0.0 explains itself ("clock not synced: 0 of 108 readings synced").
        why = explain(r["expected"], r["verified"], r["flagged"], r["status"], r["score"],
                      r["synced"])  # fmt: skip
        if args.format == "json":
            r["why"] = why
        else:
            r["why"] = "; ".join(why) or ("" if args.format == "csv" else "-")
        if args.format == "table" and r["synced"] is None:
            r["synced"] = "?"
    cols = ("epoch", "name", "did", "expected", "verified", "flagged", "synced", "status",
            "score", "why", "published", "root")  # fmt: skip
    _emit(rows, cols, args.format)
    return 0


def cmd_batch(args: argparse.Namespace) -> int:
    from gateway.attestor import registry
    from gateway.core.errors import GatewayError

    did = registry.normalise_did(args.device)
    db = _db(args)
    try:
        message = registry.batch_message(db, did, args.seq)
    finally:
        db.close()
    if message is None:
        raise GatewayError(f"no batch {args.seq} of {did} in the store")
    Path(args.output).write_bytes(message)
    print(f"batch {args.seq} of {did}: {args.output} ({len(message)} bytes); "
          f"depin-gateway prove {args.output} --index N proves one of its readings")  # fmt: skip
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    sys.stdout.write(SAMPLE)
    return 0


def add_parser(sub: Any) -> None:
    a = sub.add_parser("attestor", help="verify batches, keep chains, sign epoch attestations")
    asub = a.add_subparsers(dest="attestor_command", required=True, metavar="SUBCOMMAND")

    def with_config(p: argparse.ArgumentParser) -> None:
        p.add_argument("-c", "--config", required=True, help="attestor configuration (TOML)")

    r = asub.add_parser("run", help="subscribe, verify and attest until stopped")
    with_config(r)
    r.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    r.set_defaults(fn=cmd_run)
    g = asub.add_parser("register", help="accept batches from a device")
    with_config(g)
    g.add_argument("did", help="the device's did:key (or its device id)")
    g.add_argument("--name", required=True, help="a name for reports")
    g.set_defaults(fn=cmd_register)
    fmt = {
        "choices": ["table", "json", "csv"],
        "default": "table",
        "help": "output format (default table)",
    }
    d = asub.add_parser("devices", help="list registered devices and their chains")
    with_config(d)
    d.add_argument("--format", **fmt)
    d.set_defaults(fn=cmd_devices)
    p = asub.add_parser("report", help="the attestations: scores per device and epoch")
    with_config(p)
    p.add_argument("--epoch", type=_epoch_arg, help="only the epoch containing this time")
    p.add_argument("--device", help="only this device (did:key or device id)")
    p.add_argument("--format", **fmt)
    p.set_defaults(fn=cmd_report)
    b = asub.add_parser("batch", help="write a stored signed batch to a file (for `prove`)")
    with_config(b)
    b.add_argument("--device", required=True, help="the device (did:key or device id)")
    b.add_argument("--seq", type=int, required=True, help="the batch's seq")
    b.add_argument("-o", "--output", required=True, help="where to write it")
    b.set_defaults(fn=cmd_batch)
    s = asub.add_parser("sample", help="print a sample attestor.toml")
    s.set_defaults(fn=cmd_sample)
