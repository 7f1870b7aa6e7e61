"""The serial layer on real pseudo-terminals: pyserial transport, frame resync, the PTY server,
and the probe. Chip-specific paths are in test_sds011.py and test_pms5003.py."""

from __future__ import annotations

import contextlib
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from drivers import pms5003, sds011
from drivers.emulators.pms5003 import PMS5003Chip
from drivers.emulators.pty import PtyServer
from drivers.emulators.sds011 import SDS011Chip
from drivers.emulators.serial_testing import SDS011_EXAMPLE, pms5003_frame
from drivers.probe_serial import Found, default_ports, probe_serial
from drivers.serial_bus import (
    FrameParser,
    FrameReader,
    SerialTransport,
    make_transport,
    resolve_options,
)
from gateway.config.settings import loads
from gateway.core.errors import ConfigError, SensorError

PMS_FRAME = pms5003_frame([5, 8, 9, 5, 8, 9, 1200, 360, 70, 6, 2, 1])


@pytest.fixture
def pty_pair() -> Iterator[tuple[int, str]]:
    """A bare pseudo-terminal: (master fd, slave path), no emulator behind it."""
    import tty

    master, slave = os.openpty()
    tty.setraw(slave)
    try:
        yield master, os.ttyname(slave)
    finally:
        for fd in (master, slave):
            with contextlib.suppress(OSError):
                os.close(fd)


# --------------------------------------------------------------------------- the parser


def test_parser_finds_frames_split_across_reads() -> None:
    counters: Counter[str] = Counter()
    p = FrameParser(sds011.FRAME, counters)
    out = []
    for i in range(len(SDS011_EXAMPLE)):
        out += p.feed(SDS011_EXAMPLE[i : i + 1])
    assert out == [SDS011_EXAMPLE]
    assert not counters
    assert p.pending == 0


def test_parser_skips_garbage_once_per_run() -> None:
    counters: Counter[str] = Counter()
    p = FrameParser(sds011.FRAME, counters)
    out = p.feed(b"\x01\x02\x03" + SDS011_EXAMPLE + b"\x10\x20" + SDS011_EXAMPLE)
    assert out == [SDS011_EXAMPLE, SDS011_EXAMPLE]
    assert counters == {"resync": 2}
    # a run of garbage arriving in pieces is still one loss of sync
    p.feed(b"\x05\x06")
    p.feed(b"\x07")
    assert p.feed(SDS011_EXAMPLE) == [SDS011_EXAMPLE]
    assert counters == {"resync": 3}


def test_parser_counts_checksum_and_truncated() -> None:
    counters: Counter[str] = Counter()
    p = FrameParser(sds011.FRAME, counters)
    bad_cs = SDS011_EXAMPLE[:8] + b"\x1e" + SDS011_EXAMPLE[9:]
    cut = SDS011_EXAMPLE[:6]
    out = p.feed(bad_cs + cut + SDS011_EXAMPLE)
    assert out == [SDS011_EXAMPLE]
    assert counters == {"checksum": 1, "truncated": 1}
    assert p.rejected == 2


def test_parser_bad_tail_and_impossible_header_are_resync() -> None:
    counters: Counter[str] = Counter()
    p = FrameParser(sds011.FRAME, counters)
    assert p.feed(SDS011_EXAMPLE[:9] + b"\x00") == []
    assert counters == {"resync": 1}
    counters.clear()
    p.reset()
    # AA B4 is a host command, not something a sensor sends
    assert p.feed(b"\xaa\xb4" + SDS011_EXAMPLE) == [SDS011_EXAMPLE]
    assert counters == {"resync": 1}


def test_parser_keeps_a_partial_start_sequence() -> None:
    p = FrameParser(pms5003.FRAME)
    assert p.feed(b"\x00\x00\x42") == []
    assert p.pending == 1
    assert p.feed(PMS_FRAME[1:]) == [PMS_FRAME]
    assert p.counters == {"resync": 1}


def test_parser_drop_partial_counts_a_cut_frame() -> None:
    p = FrameParser(pms5003.FRAME)
    p.feed(PMS_FRAME[:20])
    assert p.pending == 20
    p.drop_partial()
    assert p.pending == 0
    assert p.counters == {"truncated": 1}
    assert p.feed(PMS_FRAME) == [PMS_FRAME]


def test_parser_reads_pms_acks_and_data() -> None:
    ack = bytes.fromhex("42 4d 00 04 e1 00 01 74")
    p = FrameParser(pms5003.FRAME)
    assert p.feed(ack + PMS_FRAME) == [ack, PMS_FRAME]
    assert not p.counters


# --------------------------------------------------------------------------- the transport


def test_transport_resets_input_at_open_and_talks_9600_8n1(pty_pair: tuple[int, str]) -> None:
    import termios

    master, port = pty_pair
    os.write(master, b"stale bytes from before")
    t = SerialTransport(port)
    t.open()
    try:
        assert t.waiting() == 0, "the input buffer was reset at open"
        attrs = termios.tcgetattr(master)
        assert attrs[4] == attrs[5] == termios.B9600
        assert attrs[2] & termios.CSIZE == termios.CS8
        assert not attrs[2] & (termios.PARENB | termios.CSTOPB)
        os.write(master, b"hello")
        assert t.read(64, 1.0) == b"hello"
        t.write(b"cmd")
        time.sleep(0.05)
        assert os.read(master, 16) == b"cmd"
        started = time.monotonic()
        assert t.read(64, 0.2) == b""
        assert 0.15 < time.monotonic() - started < 0.6
    finally:
        t.close()


def test_transport_open_is_exclusive(pty_pair: tuple[int, str]) -> None:
    _, port = pty_pair
    first = make_transport(port)
    first.open()
    try:
        second = SerialTransport(port)
        with pytest.raises(SensorError, match="cannot open"):
            second.open()
    finally:
        first.close()
    second.open()  # free again once the first let go
    second.close()


def test_transport_errors_are_sensor_errors(tmp_path: Path) -> None:
    t = SerialTransport(str(tmp_path / "ttyUSB9"))
    with pytest.raises(SensorError, match="ttyUSB9: cannot open"):
        t.open()
    with pytest.raises(SensorError, match="not open"):
        t.read(1, 0.1)
    t.close()  # safe after a failed open
    t.close()


def test_unplug_makes_the_path_vanish_and_reads_fail(tmp_path: Path) -> None:
    link = tmp_path / "ttyUSB0"
    server = PtyServer(SDS011Chip(mode="query"), link=link).start()
    try:
        first_port = server.port
        assert os.path.realpath(link) == first_port
        t = SerialTransport(str(link))
        t.open()
        server.unplug()
        assert not os.path.exists(first_port)
        assert not link.exists() and not link.is_symlink()
        with pytest.raises(SensorError, match="ttyUSB0"):
            t.read(10, 0.5)
        t.close()
        with pytest.raises(SensorError, match="cannot open"):
            t.open()
        server.replug()
        assert server.plugged and server.replugs == 1
        assert os.path.realpath(link) == server.port
        t.open()  # the same configured path works again
        t.write(sds011.GET_STATE)
        reader = FrameReader(t, FrameParser(sds011.FRAME))
        assert reader.read_frame(lambda f: True, 1.0) is not None
        t.close()
    finally:
        server.stop()


def test_emulator_ignores_a_host_at_the_wrong_speed(tmp_path: Path) -> None:
    import serial

    chip = SDS011Chip(mode="query")
    with PtyServer(chip, link=tmp_path / "tty") as server:
        with serial.Serial(server.path, 19200, timeout=0.3) as ser:
            ser.write(sds011.QUERY)
            assert ser.read(10) == b""
        assert chip.line_errors == len(sds011.QUERY)
        assert chip.commands == []


def test_frame_reader_detects_a_cut_frame_by_the_gap(pty_pair: tuple[int, str]) -> None:
    master, port = pty_pair
    t = SerialTransport(port)
    t.open()
    try:
        parser = FrameParser(sds011.FRAME)
        reader = FrameReader(t, parser, gap=0.1)
        os.write(master, SDS011_EXAMPLE[:5])
        started = time.monotonic()
        assert reader.read_frame(lambda f: True, 2.0) is None
        assert time.monotonic() - started < 1.0, "gave up on the gap, not the timeout"
        assert parser.counters == {"truncated": 1}
        os.write(master, SDS011_EXAMPLE)
        assert reader.read_frame(lambda f: True, 2.0) == SDS011_EXAMPLE
    finally:
        t.close()


# --------------------------------------------------------------------------- options


def test_resolve_options_fills_defaults_and_converts_durations() -> None:
    opts = resolve_options(sds011.SDS011.CONFIG, {"warmup": "1 min"}, source="t")
    assert opts == {"port": "/dev/ttyUSB0", "timeout": 2.0, "duty_cycle": True, "warmup": 60.0}
    with pytest.raises(ConfigError, match="baud: unknown option"):
        resolve_options(sds011.SDS011.CONFIG, {"baud": 9600}, source="t")


def test_port_must_be_a_device_path(tmp_path: Path) -> None:
    text = '[device]\nname = "t"\n[[sensor]]\nid = "pm"\ndriver = "sds011"\nport = "ttyUSB0"\n'
    with pytest.raises(ConfigError, match="absolute device path"):
        loads(text, base_dir=tmp_path)


# --------------------------------------------------------------------------- the probe


def test_probe_finds_each_chip_and_skips_the_rest(tmp_path: Path) -> None:
    problems: list[str] = []
    with (
        PtyServer(SDS011Chip(mode="query", asleep=True), link=tmp_path / "ttyUSB0") as sds,
        PtyServer(PMS5003Chip(mode="passive"), link=tmp_path / "serial0") as pms,
        PtyServer(PMS5003Chip(mode="active", report_every=0.2), link=tmp_path / "ttyAMA0") as act,
    ):
        noise = PtyServer(SDS011Chip(mode="query"), link=tmp_path / "ttyACM0").start()
        noise.chip.silent = True  # something is there, but it says nothing
        try:
            ports = [sds.path, pms.path, act.path, noise.path, str(tmp_path / "ttyUSB7")]
            found = probe_serial(ports, 1.5, problems=problems)
        finally:
            noise.stop()
    assert [(f.port, f.driver) for f in found] == [
        (sds.path, "sds011"),
        (pms.path, "pms5003"),
        (act.path, "pms5003"),
    ]
    assert "asleep" in found[0].detail
    assert len(problems) == 1 and "ttyUSB7" in problems[0]
    # probing changes nothing on the sensors
    assert sds.chip.asleep and pms.chip.mode == "passive"
    assert "sleep" not in sds.chip.commands and "work" not in sds.chip.commands
    # the snippets together make a configuration that passes the checker
    text = '[device]\nname = "t"\n\n' + "\n".join(f.snippet for f in found)
    cfg = loads(text, base_dir=tmp_path)
    assert [s.id for s in cfg.sensors] == ["sds011-ttyusb0", "pms5003-serial0", "pms5003-ttyama0"]
    assert cfg.sensors[0].options["port"] == sds.path
    assert cfg.sensors[0].interval == sds011.SDS011.default_interval


def test_probe_is_not_fooled_by_start_bytes(pty_pair: tuple[int, str]) -> None:
    """A line full of 0xAA and "BM" (and broken frames) is not a sensor."""
    import threading

    master, port = pty_pair
    stop = threading.Event()
    bad = SDS011_EXAMPLE[:8] + b"\x00\xab" + PMS_FRAME[:-1] + b"\x00"

    def chatter() -> None:
        while not stop.is_set():
            try:
                os.write(master, b"\xaa\xaa\xc0BMBM\x00\x1c" + bad)
            except OSError:
                return
            time.sleep(0.05)

    thread = threading.Thread(target=chatter, daemon=True)
    thread.start()
    try:
        assert probe_serial([port], 0.8) == []
    finally:
        stop.set()
        thread.join()


def test_default_ports_lists_each_device_once() -> None:
    ports = default_ports()
    assert len({os.path.realpath(p) for p in ports}) == len(ports)
    assert all(p.startswith("/dev/") for p in ports)
    assert isinstance(Found("p", "sds011", "d", "s"), Found)
