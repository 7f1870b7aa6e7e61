"""SDS011: datasheet vectors, parser properties, and the whole path from bytes on a real
pseudo-terminal through pyserial and the driver to values, with every fault mode."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import sds011
from drivers.base import Measurement
from drivers.emulators.pty import PtyServer
from drivers.emulators.sds011 import SDS011Chip
from drivers.emulators.serial_testing import (
    SDS011_EXAMPLE,
    sds011_driver,
    sds011_meant,
    sds011_report,
    serve_sds011,
    values,
)
from drivers.sds011 import SDS011, FrameError
from drivers.serial_bus import ATTEMPTS, FrameParser, SerialTransport
from gateway.config.settings import loads
from gateway.core import plugins
from gateway.core.errors import SensorError
from tests.sampler import unplug_and_replug

# --------------------------------------------------------------------------- pure functions


def test_decode_the_datasheet_example() -> None:
    assert sds011.decode_pm(SDS011_EXAMPLE) == (123.6, 261.8)
    assert sds011.device_id(SDS011_EXAMPLE) == b"\xa1\x60"
    assert sds011_report(1236, 2618) == SDS011_EXAMPLE


@pytest.mark.parametrize(
    "broken",
    [
        SDS011_EXAMPLE[:9] + b"\xaa",  # broken tail
        SDS011_EXAMPLE[:8] + b"\x1c\xab",  # broken checksum
        SDS011_EXAMPLE[:9],  # short
        b"\xaa\xc5" + SDS011_EXAMPLE[2:],  # a reply is not a report
    ],
)
def test_decode_rejects_broken_frames(broken: bytes) -> None:
    with pytest.raises(FrameError):
        sds011.decode_pm(broken)


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        (sds011.QUERY, "aa b4 04 00 00 00 00 00 00 00 00 00 00 00 00 ff ff 02 ab"),
        (sds011.SET_QUERY_MODE, "aa b4 02 01 01 00 00 00 00 00 00 00 00 00 00 ff ff 02 ab"),
        (sds011.SET_ACTIVE_MODE, "aa b4 02 01 00 00 00 00 00 00 00 00 00 00 00 ff ff 01 ab"),
        (sds011.SLEEP_CMD, "aa b4 06 01 00 00 00 00 00 00 00 00 00 00 00 ff ff 05 ab"),
        (sds011.WORK_CMD, "aa b4 06 01 01 00 00 00 00 00 00 00 00 00 00 ff ff 06 ab"),
        (sds011.set_period(5), "aa b4 08 01 05 00 00 00 00 00 00 00 00 00 00 ff ff 0c ab"),
        (sds011.GET_STATE, "aa b4 06 00 00 00 00 00 00 00 00 00 00 00 00 ff ff 04 ab"),
    ],
)
def test_command_bytes(built: bytes, expected: str) -> None:
    assert built == bytes.fromhex(expected)
    assert len(built) == sds011.COMMAND_LEN


def test_command_shortcut_and_addressed_device() -> None:
    # airrohr's shortcut: with ID FFFF and the rest zero, CS = D1 + D2 + D3 - 2
    for d1, d2, d3 in [(2, 1, 1), (6, 1, 0), (8, 1, 30), (4, 0, 0)]:
        assert sds011.command(d1, d2, d3)[17] == (d1 + d2 + d3 - 2) % 256
    cmd = sds011.command(sds011.FN_QUERY, device_id=b"\xa1\x60")
    assert cmd[15:17] == b"\xa1\x60"
    assert cmd[17] == (4 + 0xA1 + 0x60) % 256


def test_decode_reply() -> None:
    payload = bytes([6, 0, 1, 0]) + b"\xa1\x60"
    frame = b"\xaa\xc5" + payload + bytes([sum(payload) % 256, 0xAB])
    reply = sds011.decode_reply(frame)
    assert (reply.function, reply.data, reply.device_id) == (6, b"\x00\x01\x00", b"\xa1\x60")
    with pytest.raises(FrameError):
        sds011.decode_reply(SDS011_EXAMPLE)


# --------------------------------------------------------------------------- parser properties

reports = st.builds(
    sds011_report, st.integers(0, 9999), st.integers(0, 9999), st.binary(min_size=2, max_size=2)
)
no_head = st.binary(max_size=40).map(lambda b: b.replace(b"\xaa", b""))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.lists(st.binary(max_size=30), max_size=8))
def test_arbitrary_bytes_never_crash_and_only_valid_frames_come_out(
    data: bytes, chunks: list[bytes]
) -> None:
    p = FrameParser(sds011.FRAME, Counter())
    for piece in [data, *chunks]:
        for frame in p.feed(piece):
            assert sds011.check_frame(frame) is None
            if frame[1] == sds011.REPORT:
                sds011.decode_pm(frame)
    p.drop_partial()
    assert p.pending == 0


@settings(max_examples=300, deadline=None)
@given(reports, reports, st.integers(0, 9), st.integers(1, 255))
def test_a_corrupted_frame_never_yields_a_reading(
    before: bytes, good: bytes, pos: int, flip: int
) -> None:
    corrupted = bytearray(good)
    corrupted[pos] ^= flip
    p = FrameParser(sds011.FRAME, Counter())
    out = p.feed(before + bytes(corrupted) + before)
    readings = [f for f in out if f[1] == sds011.REPORT]
    assert readings == [before, before]
    # The checksum does not cover the command byte: C0 -> C5 passes as a reply (see below).
    assert all(f == before or f[1] == sds011.REPLY for f in out)


def test_the_checksum_does_not_cover_the_command_byte() -> None:
    """A report whose C0 turned into C5 on the wire is a "valid" reply. It is never a reading:
    decode_pm refuses it, and the driver takes only C0 frames in answer to a query."""
    flipped = SDS011_EXAMPLE[:1] + b"\xc5" + SDS011_EXAMPLE[2:]
    assert FrameParser(sds011.FRAME).feed(flipped) == [flipped]
    with pytest.raises(FrameError, match="not a data report"):
        sds011.decode_pm(flipped)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(no_head, reports), min_size=1, max_size=6), no_head, st.integers(1, 7))
def test_valid_frames_in_garbage_are_all_found(
    parts: list[tuple[bytes, bytes]], tail: bytes, chunk: int
) -> None:
    stream = b"".join(g + f for g, f in parts) + tail
    p = FrameParser(sds011.FRAME, Counter())
    out: list[bytes] = []
    for i in range(0, len(stream), chunk):  # arriving in small reads
        out += p.feed(stream[i : i + chunk])
    assert out == [f for _, f in parts]
    assert p.counters["resync"] <= len(parts) + 1
    assert p.counters["checksum"] == p.counters["truncated"] == 0


# --------------------------------------------------------------------------- emulator property


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=40),
            st.sampled_from(
                [
                    sds011.QUERY,
                    sds011.GET_STATE,
                    sds011.SLEEP_CMD,
                    sds011.WORK_CMD,
                    sds011.SET_ACTIVE_MODE,
                ]
            ),
        ),
        max_size=12,
    )
)
def test_the_emulator_survives_any_host_bytes(pieces: list[bytes]) -> None:
    chip = SDS011Chip(mode="query", warmup=0.0, zero_for=0.0, clock=lambda: 100.0)
    p = FrameParser(sds011.FRAME, Counter())
    for piece in pieces:
        p.feed(chip.receive(piece, 100.0))
    assert not p.counters, "everything the chip sends is a valid frame"


# --------------------------------------------------------------------------- over a real PTY


def test_registered_and_configured_like_any_driver(tmp_path: Path) -> None:
    assert plugins.driver_class("sds011") is SDS011
    assert SDS011.blocking is True
    assert dict(SDS011(sensor_id="x", options={}).quantities) == {
        "pm2_5": "ug/m3",
        "pm10": "ug/m3",
    }
    for key, field in SDS011.CONFIG.items():
        assert field.help and not field.required, key
    text = (
        '[device]\nname = "t"\n[[sensor]]\nid = "pm"\ndriver = "sds011"\n'
        'port = "/dev/serial0"\nwarmup = "20 s"\ninterval = "5 min"\n'
    )
    sensor = loads(text, base_dir=tmp_path).sensors[0]
    assert dict(sensor.options) == {
        "port": "/dev/serial0",
        "timeout": 2.0,
        "duty_cycle": True,
        "warmup": 20.0,
    }
    drv = SDS011(sensor_id=sensor.id, options=sensor.options)
    assert (drv.port, drv.warmup, drv.duty_cycle) == ("/dev/serial0", 20.0, True)


def test_open_takes_over_a_sensor_left_in_active_mode_with_stale_frames(sds011_link: Path) -> None:
    server = serve_sds011(sds011_link, mode="active", report_every=0.02)
    try:
        time.sleep(0.4)  # ~20 reports pile up in the port's buffer
        stale = len(server.chip.reports)
        assert stale >= 5
        drv = sds011_driver(server.path)
        drv.open()
        assert server.chip.mode == "query"
        assert server.chip.period == 0
        assert server.chip.commands[:3] == ["get-state", "set-query-mode", "set-period 0"]
        for _ in range(3):
            assert values(drv.read(time.time())) == sds011_meant(server.chip)
        assert server.chip.commands[-1] == "query"
        drv.close()
    finally:
        server.stop()


def test_open_wakes_a_sleeping_sensor_and_resets_its_working_period(sds011_link: Path) -> None:
    server = serve_sds011(sds011_link, mode="query", asleep=True, period=5)
    try:
        drv = sds011_driver(server.path)
        drv.open()
        chip = server.chip
        assert chip.commands[:5] == [
            "get-state",
            "work",
            "get-state",
            "set-query-mode",
            "set-period 0",
        ]
        assert not chip.asleep and chip.period == 0
        assert values(drv.read(time.time())) == sds011_meant(chip)
        assert drv.device_id == b"\xa1\x60"
        drv.close()
    finally:
        server.stop()


def test_another_device_id_is_not_our_sensor(sds011_link: Path) -> None:
    server = serve_sds011(sds011_link, mode="query", device_id=b"\x12\x34")
    try:
        drv = sds011_driver(server.path)
        drv.open()  # commands go to FFFF: every sensor answers
        assert values(drv.read(time.time())) == sds011_meant(server.chip)
        assert drv.device_id == b"\x12\x34"
        drv.close()
    finally:
        server.stop()


def test_injected_transport(sds011_server: PtyServer[SDS011Chip]) -> None:
    drv = SDS011(
        sensor_id="pm",
        options={"warmup": 0, "timeout": 0.3},
        transport=SerialTransport(sds011_server.port),
    )
    drv.open()
    assert values(drv.read(time.time())) == sds011_meant(sds011_server.chip)
    drv.close()


def test_warmup_readings_are_discarded(sds011_link: Path) -> None:
    server = serve_sds011(sds011_link, mode="query", warmup=0.5, zero_for=0.25)
    try:
        drv = sds011_driver(server.path, warmup=0.2)
        drv.open()
        first = drv.read(time.time())  # within the driver's warm-up: not even asked
        assert first == [Measurement(q, None, ("warmup",)) for q in ("pm2_5", "pm10")]
        assert "query" not in server.chip.commands
        got = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            got.append(values(drv.read(time.time())))
            last = server.chip.last
            if last is not None and not last.warm:
                break
            time.sleep(0.05)
        chip = server.chip
        # the all-zero reports right after power-up never came out as values
        zero = [r for r in chip.reports if r.pm2_5 == 0 and r.pm10 == 0]
        assert zero, "the emulator sent all-zero warm-up reports"
        assert {"pm2_5": 0.0, "pm10": 0.0} not in got
        assert got[-1] == sds011_meant(chip)
        assert drv.counters["warmup"] >= 1 + len(zero)
        drv.close()
    finally:
        server.stop()


# --------------------------------------------------------------------------- faults


def test_garbage_bad_checksums_and_cut_frames_are_survived(
    sds011_server: PtyServer[SDS011Chip],
) -> None:
    chip = sds011_server.chip
    drv = sds011_driver(sds011_server.path)
    drv.open()
    drv.counters.clear()
    chip.inject("garbage", 3)
    for _ in range(3):
        assert values(drv.read(time.time())) == sds011_meant(chip)
    assert drv.counters == {"resync": 3}

    drv.counters.clear()
    chip.inject("bad_checksum", 2)  # two bad answers, the third try is good
    assert values(drv.read(time.time())) == sds011_meant(chip)
    assert drv.counters == {"checksum": 2}
    assert chip.commands[-3:] == ["query"] * 3

    drv.counters.clear()
    chip.inject("truncated", 1)
    started = time.monotonic()
    assert values(drv.read(time.time())) == sds011_meant(chip)
    assert drv.counters == {"truncated": 1}
    assert time.monotonic() - started < 1.5

    drv.counters.clear()
    chip.inject("bad_checksum", ATTEMPTS)  # every try fails: no reading rather than a bad one
    with pytest.raises(SensorError, match="no valid answer to query data"):
        drv.read(time.time())
    assert drv.counters == {"checksum": ATTEMPTS, "timeout": 1}
    assert values(drv.read(time.time())) == sds011_meant(chip)
    drv.close()


def test_random_faults_never_yield_a_bad_reading(sds011_server: PtyServer[SDS011Chip]) -> None:
    chip = sds011_server.chip
    chip.fault_rates = {"garbage": 0.2, "truncated": 0.1, "bad_checksum": 0.2}
    drv = sds011_driver(sds011_server.path)
    drv.open()
    good = 0
    for _ in range(30):
        try:
            got = values(drv.read(time.time()))
        except SensorError:
            continue
        assert got == sds011_meant(chip)
        good += 1
    assert good >= 25
    assert drv.counters["checksum"] + drv.counters["truncated"] + drv.counters["resync"] > 0
    drv.close()


def test_silence_fails_after_the_timeout_and_readings_resume(
    sds011_server: PtyServer[SDS011Chip],
) -> None:
    drv = sds011_driver(sds011_server.path, timeout=0.2)
    drv.open()
    sds011_server.chip.silent = True
    started = time.monotonic()
    with pytest.raises(SensorError, match="no valid answer"):
        drv.read(time.time())
    took = time.monotonic() - started
    assert ATTEMPTS * 0.2 - 0.05 < took < ATTEMPTS * 0.2 + 1.0
    assert drv.counters["timeout"] == 1
    sds011_server.chip.silent = False
    assert values(drv.read(time.time())) == sds011_meant(sds011_server.chip)
    drv.close()


def test_slow_bytes_are_still_read(sds011_server: PtyServer[SDS011Chip]) -> None:
    drv = sds011_driver(sds011_server.path, timeout=1.0)
    drv.open()
    sds011_server.chip.byte_delay = 0.03
    started = time.monotonic()
    assert values(drv.read(time.time())) == sds011_meant(sds011_server.chip)
    assert time.monotonic() - started >= 9 * 0.03
    assert not drv.counters
    drv.close()


def test_a_sensor_switched_to_active_mode_is_put_back_in_query_mode(
    sds011_server: PtyServer[SDS011Chip],
) -> None:
    drv = sds011_driver(sds011_server.path)
    drv.open()
    chip = sds011_server.chip
    with chip.lock:  # another program switched it to active mode behind our back
        chip.report_every = 0.02
        chip.mode = "active"
    time.sleep(0.2)
    assert values(drv.read(time.time())) == sds011_meant(chip)
    assert drv.counters["unsolicited"] == 1
    assert chip.mode == "query"
    assert chip.commands[-2:] == ["set-query-mode", "query"]
    drv.close()


def test_unplug_and_replug_through_the_sampler(sds011_link: Path) -> None:
    server = serve_sds011(sds011_link, mode="query")
    drv = sds011_driver(str(sds011_link), timeout=0.2)
    h = unplug_and_replug(server, drv)
    out, health = h.out, h.health
    failed = [r for r in out if r.value is None]
    assert failed and all(r.flags == ["sensor-error"] for r in failed)
    assert health.sensor_errors["pm"] >= 3
    first_failure = next(i for i, r in enumerate(out) if r.value is None)
    assert any(r.value is not None for r in out[:first_failure]), "read before the unplug"
    assert out[-1].value is not None, "readings resumed after the replug"
    # re-opened and re-configured on the new pty
    assert server.chip.commands.count("set-query-mode") == 2
    assert server.replugs == 1


def test_duty_cycle_sleeps_between_reads_and_wakes_ahead(sds011_link: Path) -> None:
    server = serve_sds011(sds011_link, mode="query", warmup=0.15, zero_for=0.05)
    chip = server.chip
    try:
        drv = sds011_driver(server.path, duty_cycle=True, warmup=0.3)
        drv.open()
        assert drv.read(time.time())[0].flags == ("warmup",)
        time.sleep(1.3)
        assert values(drv.read(time.time())) == sds011_meant(chip)
        # interval 1.3 s >= 4 x 0.3 s: it went to sleep, and the state was read back
        assert drv.cycling
        assert chip.asleep
        assert chip.commands[-3:] == ["query", "sleep", "get-state"]
        time.sleep(0.4)
        assert chip.asleep, "still asleep well before the next read"
        time.sleep(0.85)
        assert not chip.asleep, "woken warmup ahead of the next read"
        assert chip.commands[-2:] == ["work", "get-state"]
        time.sleep(0.05)
        assert values(drv.read(time.time())) == sds011_meant(chip)
        assert chip.asleep
        assert drv.counters["warmup"] == 1
        drv.close()
        assert chip.asleep, "a duty-cycled sensor is left asleep"
    finally:
        server.stop()


def test_sleep_that_is_ignored_is_sent_again(sds011_link: Path) -> None:
    server = serve_sds011(sds011_link, mode="query")
    chip = server.chip
    try:
        drv = sds011_driver(server.path, duty_cycle=True, warmup=0.1)
        drv.open()
        drv.read(time.time())
        time.sleep(0.5)
        chip.ignore_sleep = 1
        drv.read(time.time())
        assert chip.commands[-4:] == ["sleep", "get-state", "sleep", "get-state"]
        assert chip.asleep
        assert drv.counters["sleep-ignored"] == 1
        # a read that comes before the timer woke it wakes it itself
        assert drv.read(time.time())[0].flags == ("warmup",)
        assert "work" in chip.commands
        drv.close()
    finally:
        server.stop()


def test_short_interval_keeps_the_sensor_running(sds011_server: PtyServer[SDS011Chip]) -> None:
    drv = sds011_driver(sds011_server.path, duty_cycle=True, warmup=0.5)
    drv.open()
    for _ in range(3):
        drv.read(time.time())
        time.sleep(0.1)
    assert not drv.cycling
    assert "sleep" not in sds011_server.chip.commands
    drv.close()


def test_probe_finds_it(sds011_link: Path, tmp_path: Path) -> None:
    from drivers.probe_serial import probe_serial

    server = serve_sds011(sds011_link, mode="query")
    try:
        found = probe_serial([server.path], 1.0)
    finally:
        server.stop()
    assert [f.driver for f in found] == ["sds011"]
    assert "a160" in found[0].detail
    cfg = loads('[device]\nname = "t"\n' + found[0].snippet, base_dir=tmp_path)
    assert cfg.sensors[0].driver == "sds011"


def test_the_documented_sample_loads_and_lists_every_option(tmp_path: Path) -> None:
    import re

    doc = (Path(__file__).resolve().parents[2] / "docs" / "sensors" / "sds011.md").read_text()
    sample = re.search(r"```toml\n(.*?)```", doc, flags=re.S)
    assert sample is not None
    cfg = loads('[device]\nname = "t"\n' + sample[1], base_dir=tmp_path)
    assert cfg.sensors[0].driver == "sds011"
    for key in SDS011.CONFIG:
        assert f"| `{key}` |" in doc, key
