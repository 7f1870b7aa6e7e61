"""`python -m gateway.dashboard …`, the same as `depin-gateway dashboard …`."""

from __future__ import annotations

import argparse
import sys

from gateway.core.errors import ConfigError, GatewayError
from gateway.dashboard.cli import add_parser


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="depin-gateway")
    add_parser(p.add_subparsers(dest="command", required=True))
    args = p.parse_args(["dashboard", *(sys.argv[1:] if argv is None else argv)])
    try:
        return int(args.fn(args))
    except ConfigError as e:
        for line in e.problems:
            print(f"depin-gateway dashboard: {line}", file=sys.stderr)
        return e.exit_code
    except GatewayError as e:
        print(f"depin-gateway dashboard: {e}", file=sys.stderr)
        return int(getattr(e, "exit_code", 1))


if __name__ == "__main__":
    raise SystemExit(main())
