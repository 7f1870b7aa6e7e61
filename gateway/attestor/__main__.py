"""`python -m gateway.attestor …`, the same as `depin-gateway attestor …`."""

from __future__ import annotations

import argparse
import sys

from gateway.attestor.cli import add_parser
from gateway.core.errors import GatewayError


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="depin-gateway")
    add_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["attestor", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.fn(args))
    except GatewayError as e:
        print(f"depin-gateway attestor: {e}", file=sys.stderr)
        return int(getattr(e, "exit_code", 1))


if __name__ == "__main__":
    raise SystemExit(main())
