from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers.emulators import i2c as emulated
from drivers.emulators.i2c import VirtualClock
from drivers.emulators.pms5003 import PMS5003Chip
from drivers.emulators.pty import PtyServer
from drivers.emulators.sds011 import SDS011Chip
from drivers.emulators.serial_testing import (
    PMS5003_LINK,
    SDS011_LINK,
    serve_pms5003,
    serve_sds011,
)
from tests.brokers import Mosquitto
from tests.pg import database


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An attestor store of each kind: the same tests run against both."""
    if request.param == "sqlite":
        yield str(tmp_path / "attestor.db")
    else:
        with database() as url:
            yield url


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    broker = Mosquitto(tmp_path / "broker")
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def clock() -> Iterator[VirtualClock]:
    """The emulated I2C bus in virtual time, its air as simulated (a module that needs the air
    held at given values defines its own `clock` with `virtual_time(temperature=...)`)."""
    with emulated.virtual_time() as clk:
        yield clk


@pytest.fixture
def sds011_link(tmp_path: Path) -> Path:
    """Where a test plugs its SDS011: the link a udev rule would make for its USB adapter."""
    return tmp_path / SDS011_LINK


@pytest.fixture
def sds011_server(sds011_link: Path) -> Iterator[PtyServer[SDS011Chip]]:
    """An SDS011 in query mode (as its driver keeps it) behind `sds011_link`."""
    s = serve_sds011(sds011_link, mode="query")
    yield s
    s.stop()


@pytest.fixture
def pms5003_link(tmp_path: Path) -> Path:
    """Where a test plugs its PMS5003: the link the Pi's UART has."""
    return tmp_path / PMS5003_LINK


@pytest.fixture
def pms5003_server(pms5003_link: Path) -> Iterator[PtyServer[PMS5003Chip]]:
    """A PMS5003 in passive mode (as its driver keeps it) behind `pms5003_link`."""
    s = serve_pms5003(pms5003_link, mode="passive")
    yield s
    s.stop()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """In CI a skipped test is a failure: what the suite claims must have been run."""
    import os

    skipped = terminalreporter.stats.get("skipped", [])
    if os.environ.get("CI") == "true" and skipped:
        terminalreporter.write_line(
            f"CI: {len(skipped)} test(s) skipped; every test must run here", red=True
        )
        terminalreporter._session.exitstatus = pytest.ExitCode.TESTS_FAILED
