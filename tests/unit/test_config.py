"""The configuration loader: the sample, strict checking with line numbers, units, rendering.

Broken configurations mark the line a problem must point at with `# <-- here`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.config.settings import (
    MODULE,
    SECTIONS,
    SENSOR,
    Config,
    load,
    loads,
    render,
    sample_text,
)
from gateway.core import plugins
from gateway.core.errors import ConfigError
from gateway.core.units import format_duration, format_size, parse_duration, parse_size

ROOT = Path(__file__).resolve().parents[2]
SRC = "cfg.toml"
MARK = "# <-- here"

DEVICE = '[device]\nname = "t"\n'
SENSOR_S = '[[sensor]]\nid = "s"\ndriver = "simulated"\n'


def config(*parts: str) -> str:
    return "\n".join(textwrap.dedent(p).strip("\n") + "\n" for p in parts)


def problems_of(text: str, base_dir: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        loads(text, source=SRC, base_dir=base_dir)
    assert info.value.source == SRC
    return info.value.problems


def marked_line(text: str) -> int | None:
    lines = [n for n, line in enumerate(text.splitlines(), 1) if line.rstrip().endswith(MARK)]
    assert len(lines) <= 1
    return lines[0] if lines else None


def line_of(text: str, snippet: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if snippet in line)


def assert_reported(problems: list[str], line: int | None, fragment: str) -> None:
    head = f"{SRC}: " if line is None else f"{SRC}:{line}: "
    hits = [p for p in problems if p.startswith(head) and fragment in p]
    assert hits, f"no problem at {head!r} containing {fragment!r} in:\n" + "\n".join(problems)


# --------------------------------------------------------------------------- the sample


def test_sample_loads(tmp_path: Path) -> None:
    cfg = loads(sample_text(), base_dir=tmp_path)
    assert cfg.device.name
    assert cfg.device.key_file == tmp_path / "device.key"
    assert cfg.spool.path == tmp_path / "spool.db"
    assert cfg.uplink.url == "mqtt://127.0.0.1:1883"
    assert (cfg.uplink.host, cfg.uplink.port, cfg.uplink.tls) == ("127.0.0.1", 1883, False)
    assert [s.driver for s in cfg.sensors] == ["simulated"]
    # the sample shows where a sensor is, and the plausibility module learns it
    assert [s.placement for s in cfg.sensors] == ["outdoor"]
    assert cfg.modules[-1].options["placements"] == {"climate": "outdoor"}
    assert [m.kind for m in cfg.modules] == [
        "ranges",
        "spikes",
        "stuck",
        "replay",
        "dropout",
        "drift",
        "plausibility",
    ]
    assert cfg.source is None


def test_sample_text_is_the_file_in_the_tree() -> None:
    assert sample_text() == (ROOT / "gateway" / "sample.toml").read_text(encoding="utf-8")
    assert sample_text().count("#") > 10, "the sample explains itself"


def test_load_resolves_paths_against_the_file(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "gateway.toml"
    path.parent.mkdir()
    path.write_text(sample_text())
    cfg = load(path)
    assert cfg.source == path
    assert cfg.device.key_file == path.parent / "device.key"
    assert cfg.spool.path == path.parent / "spool.db"


def test_load_reports_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.source == str(path)
    assert info.value.problems[0].startswith(f"{path}: cannot read")


def test_load_reports_problems_with_the_path_as_source(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(config(DEVICE, "[spool]\nmax_size = 12\n", SENSOR_S))
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.problems == [f"{path}:5: spool.max_size: must be at least 64 KiB, got 12 B"]
    assert info.value.exit_code == 2
    assert isinstance(info.value, ValueError)


# --------------------------------------------------------------------------- resolved values


def test_defaults(tmp_path: Path) -> None:
    cfg = loads(config(DEVICE, SENSOR_S), base_dir=tmp_path)
    assert cfg.device.key_file == Path("/var/lib/depin-gateway/device.key")
    assert cfg.spool.path == Path("/var/lib/depin-gateway/spool.db")
    assert cfg.spool.max_size == 256 * 1024 * 1024
    assert cfg.spool.commit_interval == 60.0
    up = cfg.uplink
    assert (up.url, up.host, up.port, up.tls) == ("mqtt://127.0.0.1:1883", "127.0.0.1", 1883, False)
    assert (up.topic_prefix, up.client_id, up.protocol, up.insecure) == (
        "depin/v1",
        None,
        "auto",
        False,
    )
    assert (up.ca_file, up.cert_file, up.key_file) == (None, None, None)
    assert (up.username, up.password_file, up.password_env) == (None, None, None)
    assert (up.batch_max_readings, up.batch_max_age, up.max_inflight) == (500, 60.0, 8)
    assert (up.keepalive, up.reconnect_max) == (60.0, 60.0)
    assert cfg.clock.mode == "auto"
    assert cfg.log.level == "info"
    assert cfg.modules == ()
    sensor = cfg.sensors[0]
    assert sensor.interval == plugins.driver_class("simulated").default_interval
    # the driver's own options arrive converted, defaults filled in
    assert sensor.options["seed"] == 0
    assert set(sensor.options) == set(plugins.driver_class("simulated").CONFIG)


def test_units_and_conversions(tmp_path: Path) -> None:
    text = config(
        DEVICE,
        """
        [spool]
        max_size = "1.5 GiB"
        commit_interval = 0

        [uplink]
        batch_max_age = "2 min"
        keepalive = 90
        """,
        SENSOR_S,
        """
        interval = "250 ms"
        mean_temperature = 12
        quantities = ["temperature"]
        """,
    )
    cfg = loads(text, base_dir=tmp_path)
    assert cfg.spool.max_size == 1536 * 1024 * 1024
    assert cfg.spool.commit_interval == 0.0
    assert cfg.uplink.batch_max_age == 120.0
    assert cfg.uplink.keepalive == 90.0
    sensor = cfg.sensors[0]
    assert sensor.interval == 0.25
    assert sensor.options["mean_temperature"] == 12.0
    assert isinstance(sensor.options["mean_temperature"], float)
    assert tuple(sensor.options["quantities"]) == ("temperature",)


@pytest.mark.parametrize(
    ("url", "host", "port", "tls"),
    [
        ("mqtt://localhost", "localhost", 1883, False),
        ("mqtt://127.0.0.2:1884", "127.0.0.2", 1884, False),
        ("mqtt://[::1]:1883", "::1", 1883, False),
        ("mqtts://broker.example.org", "broker.example.org", 8883, True),
        ("mqtts://broker.example.org:443/", "broker.example.org", 443, True),
    ],
)
def test_url_parsing(tmp_path: Path, url: str, host: str, port: int, tls: bool) -> None:
    cfg = loads(config(DEVICE, f'[uplink]\nurl = "{url}"\n', SENSOR_S), base_dir=tmp_path)
    assert (cfg.uplink.host, cfg.uplink.port, cfg.uplink.tls) == (host, port, tls)


def test_insecure_allows_plain_text_to_a_remote_broker(tmp_path: Path) -> None:
    text = config(DEVICE, '[uplink]\nurl = "mqtt://10.0.0.5"\ninsecure = true\n', SENSOR_S)
    assert loads(text, base_dir=tmp_path).uplink.host == "10.0.0.5"


def test_tls_files_and_credentials(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ca.pem", "client.pem", "client.key", "password"):
        (tmp_path / name).write_text("x")
    monkeypatch.setenv("GW_TEST_PASSWORD", "secret")
    text = config(
        DEVICE,
        """
        [uplink]
        url = "mqtts://broker.example.org"
        ca_file = "ca.pem"
        cert_file = "client.pem"
        key_file = "client.key"
        username = "gw"
        password_file = "password"
        client_id = "gw-1"
        protocol = "3.1.1"
        """,
        SENSOR_S,
    )
    up = loads(text, base_dir=tmp_path).uplink
    assert (up.ca_file, up.cert_file, up.key_file) == (
        tmp_path / "ca.pem",
        tmp_path / "client.pem",
        tmp_path / "client.key",
    )
    assert up.password_file == tmp_path / "password"
    assert (up.username, up.client_id, up.protocol) == ("gw", "gw-1", "3.1.1")
    env = text.replace('password_file = "password"', 'password_env = "GW_TEST_PASSWORD"')
    assert loads(env, base_dir=tmp_path).uplink.password_env == "GW_TEST_PASSWORD"


def test_render_round_trips(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("x")
    text = config(
        DEVICE,
        '[uplink]\nurl = "mqtts://broker.example.org"\nca_file = "ca.pem"\n',
        SENSOR_S,
        'interval = "5 min"\nfaults = ["spike"]\n',
        '[[module]]\nid = "physics"\nkind = "ranges"\nranges = { temperature = [-10, 50] }\n',
    )
    cfg = loads(text, base_dir=tmp_path)
    out = render(cfg)
    resolved = tomllib.loads(out)
    assert resolved["spool"]["max_size"] == 256 * 1024 * 1024
    assert resolved["sensor"][0]["interval"] == 300.0
    assert resolved["uplink"]["ca_file"] == str(tmp_path / "ca.pem")
    again = loads(out, base_dir=Path("/somewhere/else"))
    assert again.to_dict() == cfg.to_dict()
    assert again == cfg


def test_sensor_placements_reach_the_modules_that_ask(tmp_path: Path) -> None:
    text = config(
        DEVICE,
        '[[sensor]]\nid = "co2"\ndriver = "simulated"\nkind = "co2"\nplacement = "Indoor"\n',
        '[[sensor]]\nid = "garden"\ndriver = "simulated"\nplacement = "outdoor"\n',
        '[[sensor]]\nid = "box"\ndriver = "simulated"\n',
        '[[module]]\nid = "p"\nkind = "plausibility"\n',
        '[[module]]\nid = "r"\nkind = "ranges"\n',
    )
    cfg = loads(text, base_dir=tmp_path)
    assert [s.placement for s in cfg.sensors] == ["Indoor", "outdoor", None]
    plausibility, ranges = cfg.modules
    # sensors without a placement are not listed: together they are one place
    assert plausibility.options["placements"] == {"co2": "Indoor", "garden": "outdoor"}
    assert "placements" not in ranges.options  # a module that does not ask gets nothing
    assert "placement" not in cfg.sensors[0].options  # and drivers never see it
    out = render(cfg)
    assert 'placement = "Indoor"' in out and "# placement: not set" in out
    assert 'placements = { co2 = "Indoor", garden = "outdoor" }' in out
    assert loads(out, base_dir=tmp_path) == cfg
    # the module's table may say it too (a resolved file does), agreeing but for case
    same = text.replace(
        'kind = "plausibility"\n', 'kind = "plausibility"\nplacements = { co2 = "indoor" }\n'
    )
    assert loads(same, base_dir=tmp_path).modules[0].options["placements"]["co2"] == "indoor"


def test_render_round_trips_the_sample(tmp_path: Path) -> None:
    cfg = loads(sample_text(), base_dir=tmp_path)
    assert loads(render(cfg)) == cfg


def test_to_dict_is_json(tmp_path: Path) -> None:
    cfg = loads(sample_text(), base_dir=tmp_path)
    data = cfg.to_dict()
    assert json.loads(json.dumps(data, sort_keys=True)) == data
    assert data["spool"]["path"] == str(tmp_path / "spool.db")
    assert data["sensors"][0]["options"]["seed"] == cfg.sensors[0].options["seed"]
    assert "source" not in data


def test_config_is_frozen(tmp_path: Path) -> None:
    cfg = loads(sample_text(), base_dir=tmp_path)
    with pytest.raises(AttributeError):
        cfg.device.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.sensors[0].options["seed"] = 2  # type: ignore[index]
    assert isinstance(cfg, Config)


# --------------------------------------------------------------------------- broken configs


BROKEN: list[tuple[str, str, str]] = [
    (
        "toml syntax error",
        """
        [device]
        name = "t"
        [spool  # <-- here
        """,
        "TOML syntax error: Expected ']'",
    ),
    (
        "unknown top-level table",
        DEVICE + "[uplnk]  # <-- here\nurl = 'mqtt://localhost'\n" + SENSOR_S,
        "uplnk: unknown top-level table; did you mean 'uplink'?",
    ),
    (
        "unknown key with did-you-mean",
        DEVICE + "[spool]\ncomit_interval = '5 s'  # <-- here\n" + SENSOR_S,
        "spool.comit_interval: unknown key; did you mean 'commit_interval'?",
    ),
    (
        "wrong type",
        DEVICE + SENSOR_S + "interval = true  # <-- here\n",
        'sensor[0].interval: expected a duration like "30 s", got boolean',
    ),
    (
        "bad duration unit",
        DEVICE + SENSOR_S + 'interval = "5 parsecs"  # <-- here\n',
        'sensor[0].interval: invalid duration "5 parsecs": unknown unit "parsecs"; use a number '
        "with one of ms, s, min, h, d",
    ),
    (
        "bad size unit",
        DEVICE + '[spool]\nmax_size = "3 bananas"  # <-- here\n' + SENSOR_S,
        'spool.max_size: invalid size "3 bananas": unknown unit "bananas"; use a number with one '
        "of B, KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024)",
    ),
    (
        "out of range",
        DEVICE + "[uplink]\nbatch_max_readings = 20000  # <-- here\n" + SENSOR_S,
        "uplink.batch_max_readings: must be at most 10000, got 20000",
    ),
    (
        "duration out of range",
        DEVICE + '[spool]\ncommit_interval = "2 h"  # <-- here\n' + SENSOR_S,
        "spool.commit_interval: must be at most 1 h, got 2 h",
    ),
    (
        "interval too short",
        DEVICE + SENSOR_S + "interval = 0  # <-- here\n",
        "sensor[0].interval: must be at least 10 ms, got 0 s",
    ),
    (
        "missing required key (at its table header)",
        "[device]  # <-- here\nkey_file = 'k'\n" + SENSOR_S,
        "device.name: required key is missing",
    ),
    (
        "missing [device]",
        SENSOR_S,
        "device: required table [device] is missing",
    ),
    (
        "no sensors",
        DEVICE,
        "sensor: no sensors: at least one [[sensor]] table is required",
    ),
    (
        "empty sensor array",
        "sensor = []  # <-- here\n" + DEVICE,
        "sensor: no sensors",
    ),
    (
        "[sensor] instead of [[sensor]]",
        DEVICE + "[sensor]  # <-- here\nid = 's'\ndriver = 'simulated'\n",
        "sensor: expected an array of tables [[sensor]], got table",
    ),
    (
        "duplicate sensor id",
        DEVICE + SENSOR_S + '[[sensor]]\nid = "s"  # <-- here\ndriver = "simulated"\n',
        "sensor[1].id: duplicate sensor id 's' (first used by sensor[0], line 4)",
    ),
    (
        "bad sensor id",
        DEVICE + '[[sensor]]\nid = "PM 2.5"  # <-- here\ndriver = "simulated"\n',
        "sensor[0].id: invalid sensor id 'PM 2.5': use 1 to 64 lower-case letters, digits, "
        "'_' and '-', starting with a letter or digit, nothing else",
    ),
    (
        # "$" in a regular expression also matches before a final newline
        "sensor id with a trailing newline",
        DEVICE + '[[sensor]]\nid = "pm\\n"  # <-- here\ndriver = "simulated"\n',
        "sensor[0].id: invalid sensor id 'pm\\n': use 1 to 64 lower-case letters",
    ),
    (
        "sensor id too long for a topic level",
        DEVICE + f'[[sensor]]\nid = "{"a" * 65}"  # <-- here\ndriver = "simulated"\n',
        "sensor[0].id: invalid sensor id",
    ),
    (
        "placement with a newline",
        DEVICE + SENSOR_S + 'placement = "indoor\\n"  # <-- here\n',
        "sensor[0].placement: placement 'indoor\\n' contains a control character",
    ),
    (
        "placement with outer spaces",
        DEVICE + SENSOR_S + 'placement = " indoor"  # <-- here\n',
        "sensor[0].placement: placement ' indoor' starts or ends with a space",
    ),
    (
        "module placements disagreeing with the sensor's",
        DEVICE
        + SENSOR_S
        + 'placement = "indoor"\n[[module]]\nid = "p"\nkind = "plausibility"\n'
        + 'placements = { s = "outdoor" }  # <-- here\n',
        "module[0].placements: s: 'outdoor' here, but its [[sensor]] table says placement = "
        "'indoor'; set it once, in the [[sensor]] table",
    ),
    (
        "module placements naming no sensor",
        DEVICE
        + SENSOR_S
        + '[[module]]\nid = "p"\nkind = "plausibility"\n'
        + 'placements = { garden = "outdoor" }  # <-- here\n',
        "module[0].placements: garden: no [[sensor]] has this id (sensors: s)",
    ),
    (
        "unknown driver with did-you-mean",
        DEVICE + '[[sensor]]\nid = "s"\ndriver = "simulatd"  # <-- here\n',
        "sensor[0].driver: unknown driver 'simulatd'; did you mean 'simulated'?",
    ),
    (
        "unknown driver option with did-you-mean",
        DEVICE + SENSOR_S + "seeed = 3  # <-- here\n",
        "sensor[0].seeed: unknown key; did you mean 'seed'?",
    ),
    (
        "driver option of the wrong type",
        DEVICE + SENSOR_S + 'seed = "x"  # <-- here\n',
        'sensor[0].seed: expected an integer, got string "x"',
    ),
    (
        "driver option choice misspelt",
        DEVICE + SENSOR_S + 'kind = "climat"  # <-- here\n',
        'sensor[0].kind: must be one of "climate", "pm", "co2", "all", got "climat"; '
        "did you mean 'climate'?",
    ),
    (
        "driver option check",
        DEVICE + SENSOR_S + 'faults = ["spike", "spikes"]  # <-- here\n',
        "sensor[0].faults: unknown fault",
    ),
    (
        "choice misspelt",
        DEVICE + SENSOR_S + '[clock]\nmode = "synched"  # <-- here\n',
        'clock.mode: must be one of "auto", "synced", "unsynced", got "synched"; '
        "did you mean 'synced'?",
    ),
    (
        "number where a choice string is expected",
        DEVICE + "[uplink]\nprotocol = 5  # <-- here\n" + SENSOR_S,
        'uplink.protocol: expected one of "auto", "5", "3.1.1", got integer 5',
    ),
    (
        "float where an integer is expected",
        DEVICE + "[uplink]\nmax_inflight = 2.5  # <-- here\n" + SENSOR_S,
        "uplink.max_inflight: expected an integer, got float 2.5",
    ),
    (
        "plain text to a remote host",
        DEVICE + '[uplink]\nurl = "mqtt://broker.example.org"  # <-- here\n' + SENSOR_S,
        "uplink.url: plain-text MQTT to 'broker.example.org', which is not this machine, would "
        "send readings and credentials unencrypted; use mqtts:// or set insecure = true",
    ),
    (
        "TLS option with mqtt://",
        DEVICE + '[uplink]\nurl = "mqtt://localhost"\nca_file = "ca.pem"  # <-- here\n' + SENSOR_S,
        "uplink.ca_file: TLS option with a plain-text mqtt:// url; use mqtts://",
    ),
    (
        "cert without key",
        DEVICE
        + '[uplink]\nurl = "mqtts://b.example"\ncert_file = "ca.pem"  # <-- here\n'
        + SENSOR_S,
        "uplink.cert_file: cert_file needs key_file too",
    ),
    (
        "key without cert",
        DEVICE
        + '[uplink]\nurl = "mqtts://b.example"\nkey_file = "ca.pem"  # <-- here\n'
        + SENSOR_S,
        "uplink.key_file: key_file needs cert_file too",
    ),
    (
        "password_file and password_env both",
        DEVICE
        + "[uplink]\nusername = 'gw'\npassword_file = 'ca.pem'\n"
        + "password_env = 'HOME'  # <-- here\n"
        + SENSOR_S,
        "uplink.password_env: set password_file or password_env, not both",
    ),
    (
        "password without username",
        DEVICE + "[uplink]\npassword_file = 'ca.pem'  # <-- here\n" + SENSOR_S,
        "uplink.password_file: password_file needs username",
    ),
    (
        "password_env not set",
        DEVICE
        + "[uplink]\nusername = 'gw'\npassword_env = 'GW_TEST_UNSET_VARIABLE'  # <-- here\n"
        + SENSOR_S,
        "uplink.password_env: environment variable 'GW_TEST_UNSET_VARIABLE' is not set",
    ),
    (
        "missing ca_file",
        DEVICE
        + '[uplink]\nurl = "mqtts://b.example"\nca_file = "missing.pem"  # <-- here\n'
        + SENSOR_S,
        "uplink.ca_file: ca_file not found: {tmp}/missing.pem",
    ),
    (
        "bad url scheme",
        DEVICE + '[uplink]\nurl = "http://localhost"  # <-- here\n' + SENSOR_S,
        "uplink.url: unsupported scheme http:// in 'http://localhost'; use mqtt:// or mqtts://",
    ),
    (
        "credentials in the url",
        DEVICE + '[uplink]\nurl = "mqtts://gw:pw@b.example"  # <-- here\n' + SENSOR_S,
        "uplink.url: credentials do not belong in the url",
    ),
    (
        "bad port",
        DEVICE + '[uplink]\nurl = "mqtts://b.example:99999"  # <-- here\n' + SENSOR_S,
        "uplink.url: invalid port",
    ),
    (
        "wildcard in topic prefix",
        DEVICE + '[uplink]\ntopic_prefix = "depin/#"  # <-- here\n' + SENSOR_S,
        "uplink.topic_prefix: 'depin/#' must not contain the MQTT wildcards",
    ),
    (
        "unknown module kind with did-you-mean",
        DEVICE + SENSOR_S + '[[module]]\nid = "m"\nkind = "range"  # <-- here\n',
        "module[0].kind: unknown module 'range'; did you mean 'ranges'?",
    ),
    (
        "module option check",
        DEVICE
        + SENSOR_S
        + '[[module]]\nid = "m"\nkind = "ranges"\nranges = { pm10 = [5, 1] }  # <-- here\n',
        "module[0].ranges: pm10: expected [low, high] with low < high",
    ),
    (
        "duplicate module id",
        DEVICE
        + SENSOR_S
        + '[[module]]\nid = "m"\nkind = "ranges"\n'
        + '[[module]]\nid = "m"  # <-- here\nkind = "ranges"\n',
        "module[1].id: duplicate module id 'm'",
    ),
    (
        "dotted key at the top level",
        'uplink.keepalive = "1 s"  # <-- here\n' + DEVICE + SENSOR_S,
        "uplink.keepalive: must be at least 5 s, got 1 s",
    ),
    (
        "dotted key",
        'device.name = "t"\ndevice.key_fil = "k"  # <-- here\n' + SENSOR_S,
        "device.key_fil: unknown key; did you mean 'key_file'?",
    ),
    (
        "inline array of sensor tables",
        'sensor = [\n  { id = "a", driver = "simulated" },\n'
        '  { id = "b", driver = "simulated", interval = "1 fortnight" },  # <-- here\n]\n' + DEVICE,
        "sensor[1].interval: invalid duration",
    ),
    (
        "multi-line strings and arrays do not confuse the locator",
        DEVICE
        + 'notes = """\n[uplink]\nkeepalive = 1\n"""\n'
        + SENSOR_S
        + 'quantities = [\n  "temperature",\n  "humidity",\n]\ninterval = "1 y"  # <-- here\n',
        "sensor[0].interval: invalid duration",
    ),
]


@pytest.mark.parametrize(("text", "fragment"), [c[1:] for c in BROKEN], ids=[c[0] for c in BROKEN])
def test_broken_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str, fragment: str
) -> None:
    monkeypatch.delenv("GW_TEST_UNSET_VARIABLE", raising=False)
    (tmp_path / "ca.pem").write_text("x")
    text = textwrap.dedent(text).lstrip("\n")
    problems = problems_of(text, tmp_path)
    assert_reported(problems, marked_line(text), fragment.replace("{tmp}", str(tmp_path)))


def test_many_problems_reported_at_once_in_line_order(tmp_path: Path) -> None:
    text = config(
        """
        [device]
        nme = "t"

        [spool]
        max_size = "1 KiB"

        [uplink]
        url = "mqtt://broker.example.org"
        cert_file = "client.pem"

        [[sensor]]
        id = "Bad"
        driver = "simulated"
        interval = "5 parsecs"

        [[sensor]]
        id = "x"
        driver = "nope"

        [[module]]
        id = "m"
        kind = "ranges"
        rangez = {}
        """
    )
    problems = problems_of(text, tmp_path)
    expected = [
        ("[device]", "device.name: required key is missing"),
        ("nme", "device.nme: unknown key; did you mean 'name'?"),
        ("max_size", "spool.max_size: must be at least 64 KiB, got 1 KiB"),
        ("url", "uplink.url: plain-text MQTT"),
        ("cert_file", "uplink.cert_file: TLS option with a plain-text mqtt:// url"),
        ("cert_file", "uplink.cert_file: cert_file needs key_file too"),
        ("cert_file", f"uplink.cert_file: cert_file not found: {tmp_path / 'client.pem'}"),
        ('"Bad"', "sensor[0].id: invalid sensor id 'Bad'"),
        ("parsecs", 'sensor[0].interval: invalid duration "5 parsecs"'),
        ("nope", "sensor[1].driver: unknown driver 'nope'"),
        ("rangez", "module[0].rangez: unknown key; did you mean 'ranges'?"),
    ]
    assert len(problems) == len(expected), "\n".join(problems)
    for problem, (snippet, fragment) in zip(problems, expected, strict=True):
        line = line_of(text, snippet)
        assert problem.startswith(f"{SRC}:{line}: "), problem
        assert fragment in problem, problem
    lines = [int(p.split(":")[1]) for p in problems]
    assert lines == sorted(lines)


def test_locator_survives_tricky_toml(tmp_path: Path) -> None:
    text = config(
        """
        # [uplink] in a comment, keepalive = 1
        [ device ]  # spaces in the header
        "name" = 'a # not a comment = [x]'
        key_file = '''
        [spool]
        max_size = 1
        '''

        [[ sensor ]]
        id = "s"
        driver = "simulated"
        quantities = [ [ "not", "flat" ], "x" ]  # <-- here
        """
    ).replace("\n", "\r\n")
    problems = problems_of(text, tmp_path)
    assert_reported(
        problems, marked_line(text), "sensor[0].quantities: expected an array of strings"
    )
    assert len(problems) == 1, problems


def test_syntax_error_at_end_of_file(tmp_path: Path) -> None:
    text = '[device]\nname = "t"\nnotes = """\nunterminated'
    assert_reported(problems_of(text, tmp_path), 4, "TOML syntax error: Unterminated string")


def test_problem_format(tmp_path: Path) -> None:
    text = config(DEVICE, SENSOR_S, "interval = true")
    assert problems_of(text, tmp_path) == [
        f"{SRC}:{line_of(text, 'interval')}: sensor[0].interval: expected a duration like "
        '"30 s", got boolean'
    ]


# --------------------------------------------------------------------------- third-party plug-ins


THIRD_PARTY = """
from typing import Any
from drivers.base import Measurement, SensorDriver
from gateway.modules.base import DetectionModule
from gateway.core.fields import Field


def _even(value: Any) -> str | None:
    return None if value % 2 == 0 else "must be even"


def _explodes(value: Any) -> str | None:
    raise RuntimeError("boom")


class EveryKind(SensorDriver):
    name = "every-kind"
    blocking = False
    default_interval = 7.0
    CONFIG = {
        "label": Field("str", "a string"),
        "count": Field("int", "an even integer", default=2, min=0, max=10, check=_even),
        "gain": Field("float", "a number", default=1.0),
        "enabled": Field("bool", "a flag", default=True),
        "device": Field("path", "a path", default="/dev/null"),
        "warmup": Field("duration", "a duration", default="30 s"),
        "buffer": Field("size", "a size", default="4 KiB"),
        "names": Field("str-list", "strings", default=()),
        "weights": Field("float-list", "numbers", default=(), min=0),
        "extra": Field("table", "free-form", default={}),
        "fragile": Field("int", "its check raises", default=0, check=_explodes),
    }

    @staticmethod
    def check_config(options):
        if options["label"] == "forbidden":
            return ["label: must not be 'forbidden'", "the options do not fit together"]
        return []

    @property
    def quantities(self):
        return {"x": "1"}

    def read(self, now: float) -> list[Measurement]:
        return [Measurement("x", 1.0)]


class Quiet(DetectionModule):
    name = "quiet"
    version = "1"

    def judge(self, readings):
        return [(0.0, ()) for _ in readings]
"""


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A third-party distribution, registered through entry points exactly like a real one."""
    site = tmp_path / "site"
    dist = site / "gw_third_party-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gw-third-party\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[depin_gateway.drivers]\n"
        "every-kind = gw_third_party:EveryKind\n"
        "broken = gw_third_party_broken:Driver\n"
        "[depin_gateway.modules]\n"
        "quiet = gw_third_party:Quiet\n"
    )
    (site / "gw_third_party.py").write_text(THIRD_PARTY)
    (site / "gw_third_party_broken.py").write_text("raise ImportError('needs libfoo')\n")
    monkeypatch.syspath_prepend(str(site))
    plugins._load.cache_clear()
    yield
    plugins._load.cache_clear()
    for name in ("gw_third_party", "gw_third_party_broken"):
        sys.modules.pop(name, None)


@pytest.mark.usefixtures("third_party")
def test_plugin_options_of_every_kind(tmp_path: Path) -> None:
    text = config(
        DEVICE,
        """
        [[sensor]]
        id = "x"
        driver = "every-kind"
        label = "lab"
        count = 4
        gain = 3
        enabled = false
        device = "dev/ttyX"
        warmup = "1.5 min"
        buffer = "1 MiB"
        names = ["a", "b"]
        weights = [1, 2.5]
        extra = { a = 1, b = [1, 2] }
        """,
    )
    sensor = loads(text, base_dir=tmp_path).sensors[0]
    assert sensor.interval == 7.0
    assert dict(sensor.options) == {
        "label": "lab",
        "count": 4,
        "gain": 3.0,
        "enabled": False,
        "device": tmp_path / "dev" / "ttyX",
        "warmup": 90.0,
        "buffer": 1024 * 1024,
        "names": ("a", "b"),
        "weights": (1.0, 2.5),
        "extra": {"a": 1, "b": [1, 2]},
        "fragile": 0,
    }


@pytest.mark.usefixtures("third_party")
def test_plugin_rules_spanning_fields(tmp_path: Path) -> None:
    text = config(DEVICE, '[[sensor]]\nid = "x"\ndriver = "every-kind"\nlabel = "forbidden"\n')
    problems = problems_of(text, tmp_path)
    assert problems == [
        f"{SRC}:4: sensor[0]: the options do not fit together",
        f"{SRC}:7: sensor[0].label: must not be 'forbidden'",
    ]


@pytest.mark.usefixtures("third_party")
def test_plugin_problems(tmp_path: Path) -> None:
    text = config(
        DEVICE,
        """
        [[sensor]]
        id = "x"
        driver = "every-kind"
        count = 3
        names = ["a", 1]
        weights = [-1]
        extra = 5
        fragile = 1

        [[sensor]]
        id = "y"
        driver = "broken"
        whatever = 1

        [[module]]
        id = "q"
        kind = "quiet"
        unexpected = true
        """,
    )
    problems = problems_of(text, tmp_path)
    for snippet, fragment in [
        ("[[sensor]]", "sensor[0].label: required key is missing"),
        ("count", "sensor[0].count: must be even"),
        ("names", "sensor[0].names: expected an array of strings; item 1 is integer 1"),
        ("weights", "sensor[0].weights: must be at least 0, got -1"),
        ("extra", "sensor[0].extra: expected a table, got integer 5"),
        ("fragile", "sensor[0].fragile: check failed: RuntimeError: boom"),
        ("broken", "sensor[1].driver: driver 'broken' failed to load: ImportError: needs libfoo"),
        ("unexpected", "module[0].unexpected: unknown key; known keys: id, kind"),
    ]:
        assert_reported(problems, line_of(text, snippet), fragment)
    # the unloadable driver's options cannot be judged, so they are not reported
    assert not [p for p in problems if "whatever" in p]
    assert len(problems) == 8, "\n".join(problems)


# --------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5 min", 300.0),
        ("30 s", 30.0),
        ("1.5 h", 5400.0),
        ("250 ms", 0.25),
        ("2 d", 172800.0),
        ("30", 30.0),
        ("10min", 600.0),
        ("2 hours", 7200.0),
        ("1 second", 1.0),
        (45, 45.0),
        (0.5, 0.5),
    ],
)
def test_parse_duration(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("256 MiB", 256 * 1024**2),
        ("64 KiB", 65536),
        ("1 GB", 10**9),
        ("1.5 GiB", 1536 * 1024**2),
        ("512 B", 512),
        ("512", 512),
        ("2 kb", 2000),
        (4096, 4096),
    ],
)
def test_parse_size(text: str | int, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize("bad", ["5 parsecs", "", "min", "5 min 3", True, float("nan"), "1e999 s"])
def test_parse_duration_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["3 bananas", "1.5", 1.5, "KiB", False])
def test_parse_size_rejects(bad: object) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(bad)  # type: ignore[arg-type]


def test_unit_errors_name_the_text_and_the_units() -> None:
    with pytest.raises(ValueError) as info:
        parse_duration("5 parsecs")
    assert '"5 parsecs"' in str(info.value)
    assert "ms, s, min, h, d" in str(info.value)
    with pytest.raises(ValueError) as info:
        parse_size("3 bananas")
    assert '"3 bananas"' in str(info.value)
    assert "KiB, MiB, GiB" in str(info.value)


@pytest.mark.parametrize("seconds", [0.0, 0.01, 0.25, 1.5, 30.0, 90.0, 3600.0, 5400.0, 86400.0])
def test_format_duration_reads_back(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("size", [0, 1, 1000, 65536, 256 * 1024**2, 3 * 1024**4])
def test_format_size_reads_back(size: int) -> None:
    assert parse_size(format_size(size)) == size


# --------------------------------------------------------------------------- the reference doc


def test_every_key_is_documented() -> None:
    doc = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    tables = {f"`[{name}]`": fields for name, fields in SECTIONS.items()}
    tables["`[[sensor]]`"] = SENSOR
    tables["`[[module]]`"] = MODULE
    for what, names, load_class in (
        ("driver", plugins.drivers, plugins.driver_class),
        ("module", plugins.modules, plugins.module_class),
    ):
        for name in names():
            tables[f"{what} `{name}`"] = load_class(name).CONFIG
    sections = dict(re.findall(r"^### (.+?)\n(.*?)(?=^#|\Z)", doc, flags=re.M | re.S))
    missing = []
    for title, fields in tables.items():
        body = sections.get(title)
        if body is None:
            missing.append(f"section {title}")
            continue
        missing += [f"{title} {key}" for key in fields if f"| `{key}` |" not in body]
    assert not missing, "docs/configuration.md lacks (regenerate from schema_reference()): " + (
        ", ".join(missing)
    )


# --------------------------------------------------------------------------- the CLI


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=60,
    )


def test_cli_sample_and_check(tmp_path: Path) -> None:
    sample = run_cli("config", "sample", cwd=tmp_path)
    assert sample.returncode == 0, sample.stderr
    assert sample.stdout == sample_text()
    path = tmp_path / "gateway.toml"
    path.write_text(sample.stdout)
    check = run_cli("config", "check", str(path), cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert tomllib.loads(check.stdout)["device"]["key_file"] == str(tmp_path / "device.key")
    assert check.stdout == render(load(path))


def test_cli_check_refuses_a_sensor_id_with_a_trailing_newline(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    text = sample_text().replace('id = "climate"', 'id = "climate\\n"')
    path.write_text(text)
    check = run_cli("config", "check", str(path), cwd=tmp_path)
    assert check.returncode == 2, check.stderr
    line = line_of(text, 'id = "climate')
    assert (
        f"{path}:{line}: sensor[0].id: invalid sensor id 'climate\\n': use "
        "1 to 64 lower-case letters, digits, '_' and '-', starting with a letter or digit, "
        "nothing else (no spaces, dots or newlines)"
    ) in check.stderr
    assert check.stdout == ""


def test_cli_check_reports_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    text = config('[device]\nnme = "t"', SENSOR_S, "interval = true")
    path.write_text(text)
    check = run_cli("config", "check", str(path), cwd=tmp_path)
    assert check.returncode == ConfigError.exit_code == 2
    lines = [line for line in check.stderr.splitlines() if line.startswith(str(path))]
    assert lines == [
        f"{path}:1: device.name: required key is missing",
        f"{path}:2: device.nme: unknown key; did you mean 'name'?",
        f"{path}:{line_of(text, 'interval')}: sensor[0].interval: expected a duration like "
        '"30 s", got boolean',
    ]
    assert check.stdout == ""
