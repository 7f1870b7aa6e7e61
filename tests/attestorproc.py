"""The attestor as the tests and benchmarks run it: its config file, the real process with its
log in a file, a worker thread in the test's own process, and a wait that names what it waited
for."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from gateway.attestor.service import Worker
from gateway.wire import identity


def write_config(workdir: Path, port: int, store: str | Path, **attestor: str | int) -> Path:
    """attestor.toml in `workdir` with a new attestor.key beside it; `attestor` adds lines to
    its [attestor] section (a string quoted, a number as it is)."""
    key = workdir / "attestor.key"
    identity.generate(key)
    lines = [f'key_file = "{key}"', f'store = "{store}"']
    lines += [f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}" for k, v in attestor.items()]
    conf = workdir / "attestor.toml"
    conf.write_text(
        "[attestor]\n" + "\n".join(lines) + f'\n[broker]\nurl = "mqtt://127.0.0.1:{port}"\n'
    )
    return conf


def start(
    conf: Path, log: Path, *, env: Mapping[str, str] | None = None, **popen: Any
) -> subprocess.Popen[bytes]:
    """`python -m gateway.attestor run -c conf`, its output in `log`, unbuffered."""
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gateway.attestor", "run", "-c", str(conf)],
            stdout=out,
            stderr=out,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
            **popen,
        )


def wait(cond: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.contextmanager
def running(w: Worker) -> Iterator[threading.Thread]:
    """The worker's loop in a thread, connected and subscribed; stopped and joined after."""
    stop = threading.Event()
    t = threading.Thread(target=w.run, args=(stop,), daemon=True)
    t.start()
    try:
        assert w.connected.wait(10), "the worker did not connect"
        time.sleep(0.5)  # connected is set as the subscription goes out: let it take effect
        yield t
    finally:
        stop.set()
        t.join(20)
        assert not t.is_alive()
