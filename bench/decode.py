"""Decode and verify throughput of honest batches: `verify.examine` per second and readings per
second, through the code of the tree it runs from.

    python bench/decode.py                         # this tree
    python bench/decode.py --baseline /tmp/old     # also a checkout of an older commit, and
                                                   # the ratio of the two (same interpreter)

Batches of 1,000 records like the gateway's (names, units, values with fractions, times with
fractions, scores, a flag now and then) are signed in advance; each run examines every one of
them several times and keeps the best of its rounds (the figure least disturbed by whatever
else the machine does). A baseline runs in a subprocess with only the older tree's `gateway`
importable, so both sides measure the same messages with the same interpreter and libraries.

One JSON object on stdout; prose on stderr. Exit code 0 when the slowdown is within its target.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
RECORDS = 1000
#: honest verification may cost this much more than the baseline's
TARGET_RATIO = 1.15


def messages(n: int, records: int) -> list[bytes]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from gateway.wire import cose, payloads
    from gateway.wire.identity import Identity

    ident = Identity.from_private_key(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
    modules = [("ranges", "1.0", bytes(range(32)))]
    out, prev, t = [], bytes(32), 1_767_225_600.0
    for seq in range(n):
        recs = []
        for i in range(records):
            t += 0.731
            name, unit = (("climate/temperature", "Cel"), ("pm/pm2_5", "ug/m3"))[i % 2]
            value = round(20 + (i % 97) * 0.173, 3)
            flags = ["spike"] if i % 50 == 0 else []
            recs.append(payloads.encode_record(name, unit, value, round(t, 3), 0.0625, flags))
        payload, _ = payloads.encode_batch(
            did=ident.did, seq=seq, prev=prev, sealed=round(t, 3), records=recs,
            clock_synced=True, clock_source="ntp", modules=modules, dropped=(),
            boot=bytes(16),
        )  # fmt: skip
        out.append(cose.sign1(ident, cose.TYP_BATCH, payload))
        prev = hashlib.sha256(payload).digest()
    return out


def measure(batches: int, rounds: int) -> dict[str, Any]:
    """This process's `gateway` on freshly built messages: the best round."""
    import gateway
    from gateway.wire import verify

    msgs = messages(batches, RECORDS)
    found = [verify.examine(m) for m in msgs]
    assert all(isinstance(x, verify.Examined) for x in found), found[:1]
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for m in msgs:
            verify.examine(m)
        best = min(best, time.perf_counter() - start)
    return {
        "gateway": str(Path(gateway.__file__).resolve().parent.parent),
        "batches": batches,
        "records_per_batch": RECORDS,
        "bytes_per_batch": len(msgs[0]),
        "examine_per_s": round(batches / best, 1),
        "readings_per_s": round(batches * RECORDS / best),
        "ms_per_batch": round(best / batches * 1000, 3),
    }


def run_in(tree: Path, batches: int, rounds: int) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--inner"]
    cmd += ["--batches", str(batches), "--rounds", str(rounds)]
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(out.stdout)
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batches", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--baseline", type=Path, help="a checkout of an older commit")
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner:
        print(json.dumps(measure(args.batches, args.rounds)))
        return 0
    print(f"examining {args.batches} batches of {RECORDS} records...", file=sys.stderr)
    result: dict[str, Any] = {"new": run_in(REPO, args.batches, args.rounds)}
    ok = True
    if args.baseline is not None:
        result["baseline"] = run_in(args.baseline.resolve(), args.batches, args.rounds)
        ratio = result["baseline"]["examine_per_s"] / result["new"]["examine_per_s"]
        ok = ratio <= TARGET_RATIO
        result["slowdown"] = {
            "value": round(ratio, 3),
            "target": f"<= {TARGET_RATIO}",
            "pass": ok,
        }
    result["pass"] = ok
    print(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
