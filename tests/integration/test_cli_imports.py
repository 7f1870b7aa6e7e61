"""What `depin-gateway --help` and `status` load, and the settings `status` reads by itself.

An owner on SSH types these two most: `--help` must not load the configuration machinery, and
`status` must not load the strict loader with every plug-in, the daemon's asyncio and MQTT stack
or cryptography (each costs tens of milliseconds on a Pi). `status` reads the three settings it
shows straight from the file; whenever one of them has a problem, the strict loader reports
every problem of the file, exactly as `config check` and `run` do.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import sections as config_schema
from gateway.config import settings as config
from gateway.core.errors import ConfigError
from gateway.monitor import status

SENSOR = '[[sensor]]\nid = "s"\ndriver = "simulated"\n'
MODULE = '[[module]]\nid = "ranges"\nkind = "ranges"\n'

#: nothing `status` of a valid configuration needs (prefixes of module names)
NOT_FOR_STATUS = (
    "gateway.config.settings",
    "gateway.config.check",
    "gateway.config.sections",
    "gateway.core.fields",
    "gateway.core.plugins",
    "gateway.modules",
    "gateway.device.daemon",
    "gateway.device.spool",
    "gateway.wire.payloads",
    "drivers",
    "asyncio",
    "ssl",
    "aiomqtt",
    "paho",
    "cryptography",
    "cbor2",
    "numpy",
)
#: nor `--help`, which reads no configuration at all
NOT_FOR_HELP = (
    *NOT_FOR_STATUS,
    "gateway.monitor.status",
    "tomllib",
    "sqlite3",
    "gateway.attestor",
    "gateway.dashboard",
    "gateway.cli.firstboot",
)


def loaded(*argv: str) -> tuple[int, list[str]]:
    """Exit code of `depin-gateway ARGV` run in a fresh interpreter, and the modules it loaded."""
    code = (
        "import contextlib, io, json, sys\n"
        "from gateway.cli import main as cli\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        rc = cli.main({list(argv)!r})\n"
        "    except SystemExit as e:\n"
        "        rc = e.code\n"
        "print(json.dumps([rc, sorted(sys.modules)]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rc, modules = json.loads(r.stdout)
    return rc, modules


def among(modules: list[str], prefixes: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == p or m.startswith(p + ".") for p in prefixes)]


def test_help_loads_no_configuration_and_no_subcommand_module() -> None:
    rc, modules = loaded("--help")
    assert rc == 0
    assert among(modules, NOT_FOR_HELP) == []


def test_status_loads_neither_the_strict_loader_nor_the_daemon(tmp_path: Path) -> None:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        '[device]\nname = "t"\n[spool]\npath = "spool.db"\n[models]\n'
        'trusted_model_signers = ["did:key:z6MkkEYcyHMzpeFTQzBYFGRf44wL5gaXZ9J4cZkswNUgxrL2"]\n'
        f"{SENSOR}{MODULE}"
    )
    rc, modules = loaded("status", "-c", str(cfg))
    assert rc == 0
    assert among(modules, NOT_FOR_STATUS) == []


def test_the_defaults_status_reads_are_the_schemas() -> None:
    assert config_schema.SPOOL["path"].default == status.DEFAULT_SPOOL
    assert config_schema.UPLINK["url"].default == status.DEFAULT_URL


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_bytes(text.encode())
    return path


@pytest.mark.parametrize(
    "head",
    [
        '[device]\nname = "t"\n',
        '[device]\nname = " a gateway "\n[spool]\npath = "../x/./spool.db"\n',
        '[device]\nname = "t"\n[spool]\npath = "/srv/gw/spool.db"\n',
        '[device]\nname = "t"\n[uplink]\nurl = "mqtts://broker.example"\n',
        '[device]\nname = "t"\n[uplink]\nurl = "MQTTS://Broker.Example:8884/"\n',
        '[device]\nname = "t"\n[uplink]\nurl = "mqtt://localhost"\n',
        '[device]\nname = "t"\n[uplink]\nurl = "mqtt://[::1]:1884"\n',
        '[device]\nname = "t"\n[uplink]\nurl = "mqtt://127.0.0.2:1"\n',
        '[device]\nname = "t"\n[uplink]\nurl = "mqtt://10.0.0.5"\ninsecure = true\n',
        'device = { name = "t" }\nspool.path = "s.db"\n',
    ],
)
def test_status_reads_what_the_strict_loader_resolves(tmp_path: Path, head: str) -> None:
    path = _write(tmp_path, head + SENSOR + MODULE)
    assert status.settings(path) == status.Settings.of(config.load(path))


@pytest.mark.parametrize(
    "text",
    [
        SENSOR,  # no [device]
        '[device]\nname = "  "\n' + SENSOR,
        "[device]\nname = 3\n" + SENSOR,
        'device = "t"\n' + SENSOR,
        '[device]\nname = "t"\n[spool]\npath = ""\n' + SENSOR,
        'spool = 1\n[device]\nname = "t"\n' + SENSOR,
        '[device]\nname = "t"\n[uplink]\nurl = "mqtt://10.0.0.5"\n' + SENSOR,
        '[device]\nname = "t"\n[uplink]\nurl = "mqtt://10.0.0.5"\ninsecure = "yes"\n' + SENSOR,
        '[device]\nname = "t"\n[uplink]\nurl = "http://localhost"\n' + SENSOR,
        '[device]\nname = "t"\n[uplink]\nurl = "mqtt://localhost:0"\n' + SENSOR,
        '[device]\nname = "t"\n[uplink]\nurl = "mqtt://localhost:99999"\n' + SENSOR,
        '[device]\nname = "t"\n[uplink]\nurl = "mqtt://u:p@localhost"\n' + SENSOR,
        '[device]\nname = "t"\n[uplink]\nurl = "mqtt://localhost/x"\n' + SENSOR,
        '[device]\nname = "t"\n[uplink]\nurl = "mqtt://"\n' + SENSOR,
        '[device]\nname = "t"\n[uplink]\nurl = 1883\n' + SENSOR,
        '[device\nname = "t"\n',
        '\ufeff[device]\nname = "t"\n' + SENSOR,
    ],
)
def test_a_problem_in_what_status_shows_is_reported_as_the_strict_loader_does(
    tmp_path: Path, text: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as strict:
        config.load(path)
    with pytest.raises(ConfigError) as shown:
        status.settings(path)
    assert shown.value.problems == strict.value.problems
    assert shown.value.source == strict.value.source


def test_an_unreadable_file_is_reported_as_the_strict_loader_does(tmp_path: Path) -> None:
    for path, data in ((tmp_path / "missing.toml", None), (tmp_path / "bad.toml", b"\xff\n")):
        if data is not None:
            path.write_bytes(data)
        with pytest.raises(ConfigError) as strict:
            config.load(path)
        with pytest.raises(ConfigError) as shown:
            status.settings(path)
        assert shown.value.problems == strict.value.problems


def test_a_problem_only_elsewhere_leaves_status_to_show_the_gateway(tmp_path: Path) -> None:
    """`status` checks what it shows; `config check` is what checks a whole file (and `run`
    refuses it). A daemon started from a file that was then edited still has its status shown."""
    path = _write(tmp_path, '[device]\nname = "t"\n[[sensor]]\nid = "s"\n')
    with pytest.raises(ConfigError):
        config.load(path)
    assert status.settings(path).name == "t"
