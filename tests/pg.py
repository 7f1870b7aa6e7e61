"""A throw-away PostgreSQL database per test, on the server this machine runs.

Where no server answers, the test fails with the reason, in CI and elsewhere: the attestor's
multi-worker mode is only shown against the real thing."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager

SERVER = os.environ.get("DEPIN_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")


@contextmanager
def database() -> Iterator[str]:
    import psycopg

    name = f"attestor_test_{secrets.token_hex(6)}"
    try:
        admin = psycopg.connect(SERVER, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as e:
        raise RuntimeError(
            f"PostgreSQL at {SERVER} is needed for these tests (set DEPIN_TEST_POSTGRES): {e}"
        ) from e
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        url = SERVER.rsplit("/", 1)[0] + "/" + name
        try:
            yield url
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
