"""PMS5003 / PMS7003: frames built per the datasheet, parser properties, and the whole path
from bytes on a real pseudo-terminal through pyserial and the driver to values, with faults."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers import pms5003
from drivers.base import Measurement
from drivers.emulators.pms5003 import PMS5003Chip
from drivers.emulators.pty import PtyServer
from drivers.emulators.serial_testing import (
    pms5003_ack,
    pms5003_driver,
    pms5003_frame,
    pms5003_meant,
    serve_pms5003,
    values,
)
from drivers.pms5003 import PMS5003, FrameError
from drivers.serial_bus import ATTEMPTS, FrameParser
from gateway.config.settings import loads
from gateway.core import plugins
from gateway.core.errors import SensorError
from tests.sampler import unplug_and_replug

NAMES = ("pm1_cf1", "pm2_5_cf1", "pm10_cf1", "pm1", "pm2_5", "pm10")
COUNTS = ("n0_3", "n0_5", "n1_0", "n2_5", "n5_0", "n10")


# CF=1 above atmospheric at higher concentration, as Plantower's tables have it
WORDS = [38, 61, 77, 30, 47, 60, 9021, 2667, 516, 54, 14, 3]
EXAMPLE = pms5003_frame(WORDS)


# --------------------------------------------------------------------------- pure functions


def test_decode_a_frame_built_per_the_datasheet() -> None:
    data = pms5003.decode(EXAMPLE)
    assert (data.pm1_cf1, data.pm2_5_cf1, data.pm10_cf1) == (38, 61, 77)
    assert (data.pm1, data.pm2_5, data.pm10) == (30, 47, 60)
    assert (data.n0_3, data.n0_5, data.n1_0, data.n2_5, data.n5_0, data.n10) == (
        9021,
        2667,
        516,
        54,
        14,
        3,
    )
    assert (data.version, data.error) == (0x97, 0)
    assert not data.warming_up and not data.zero
    assert len(EXAMPLE) == 32 and EXAMPLE[:4] == bytes.fromhex("42 4d 00 1c")


def test_warm_up_frames_are_recognised() -> None:
    assert pms5003.decode(pms5003_frame([3, 5, 6, 3, 5, 6, 0, 0, 0, 0, 0, 0])).warming_up
    assert pms5003.decode(pms5003_frame([0] * 12)).zero
    assert not pms5003.decode(pms5003_frame([0] * 12)).warming_up


@pytest.mark.parametrize(
    "broken",
    [
        EXAMPLE[:-1] + bytes([EXAMPLE[-1] ^ 1]),  # checksum
        EXAMPLE[:4] + bytes([EXAMPLE[4] ^ 0x10]) + EXAMPLE[5:],  # a data byte flipped
        EXAMPLE[:-2],  # short
        pms5003_ack(0xE1, 0),  # an acknowledgement carries no data
        b"BM\x00\x1d" + EXAMPLE[4:],  # wrong length
    ],
)
def test_decode_rejects_broken_frames(broken: bytes) -> None:
    with pytest.raises(FrameError):
        pms5003.decode(broken)


@pytest.mark.parametrize(
    ("built", "expected"),
    [
        (pms5003.PASSIVE_MODE, "42 4d e1 00 00 01 70"),
        (pms5003.ACTIVE_MODE, "42 4d e1 00 01 01 71"),
        (pms5003.PASSIVE_READ, "42 4d e2 00 00 01 71"),
        (pms5003.SLEEP_CMD, "42 4d e4 00 00 01 73"),
        (pms5003.WAKE_CMD, "42 4d e4 00 01 01 74"),
    ],
)
def test_command_bytes(built: bytes, expected: str) -> None:
    assert built == bytes.fromhex(expected)


def test_ack_frames_parse() -> None:
    assert pms5003_ack(0xE1, 0) == bytes.fromhex("42 4d 00 04 e1 00 01 74")
    assert pms5003.check_frame(pms5003_ack(0xE4, 0)) is None


# --------------------------------------------------------------------------- parser properties

data_frames = st.builds(pms5003_frame, st.lists(st.integers(0, 0xFFFF), min_size=12, max_size=12))
no_start = st.binary(max_size=40).map(lambda b: b.replace(b"\x42", b""))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.lists(st.binary(max_size=40), max_size=8))
def test_arbitrary_bytes_never_crash_and_only_valid_frames_come_out(
    data: bytes, chunks: list[bytes]
) -> None:
    p = FrameParser(pms5003.FRAME, Counter())
    for piece in [data, *chunks]:
        for f in p.feed(piece):
            assert pms5003.check_frame(f) is None
            if len(f) == pms5003.FRAME_LEN:
                pms5003.decode(f)
    p.drop_partial()
    assert p.pending == 0


@settings(max_examples=300, deadline=None)
@given(data_frames, data_frames, st.integers(0, 31), st.integers(1, 255))
def test_a_corrupted_frame_never_yields_a_reading(
    before: bytes, good: bytes, pos: int, flip: int
) -> None:
    corrupted = bytearray(good)
    corrupted[pos] ^= flip
    p = FrameParser(pms5003.FRAME, Counter())
    out = p.feed(before + bytes(corrupted) + before)
    data = [f for f in out if len(f) == pms5003.FRAME_LEN]
    assert bytes(corrupted) not in data
    assert all(f == before for f in data)
    assert sum(p.counters.values()) >= 1


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(no_start, data_frames), min_size=1, max_size=5),
    no_start,
    st.integers(1, 9),
)
def test_valid_frames_in_garbage_are_all_found(
    parts: list[tuple[bytes, bytes]], tail: bytes, chunk: int
) -> None:
    stream = b"".join(g + f for g, f in parts) + tail
    p = FrameParser(pms5003.FRAME, Counter())
    out: list[bytes] = []
    for i in range(0, len(stream), chunk):
        out += p.feed(stream[i : i + chunk])
    assert [f for f in out if len(f) == pms5003.FRAME_LEN] == [f for _, f in parts]
    assert p.counters["checksum"] == p.counters["truncated"] == 0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=20),
            st.sampled_from(
                [pms5003.PASSIVE_MODE, pms5003.PASSIVE_READ, pms5003.SLEEP_CMD, pms5003.WAKE_CMD]
            ),
        ),
        max_size=12,
    )
)
def test_the_emulator_survives_any_host_bytes(pieces: list[bytes]) -> None:
    chip = PMS5003Chip(mode="passive", warmup=0.0, zero_for=0.0, clock=lambda: 100.0)
    p = FrameParser(pms5003.FRAME, Counter())
    for piece in pieces:
        p.feed(chip.receive(piece, 100.0))
    assert not p.counters, "everything the chip sends is a valid frame"


# --------------------------------------------------------------------------- over a real PTY


def test_registered_and_configured_like_any_driver(tmp_path: Path) -> None:
    assert plugins.driver_class("pms5003") is PMS5003
    drv = PMS5003(sensor_id="x", options={})
    assert list(drv.quantities) == [*NAMES[3:], *NAMES[:3], *COUNTS]
    assert set(drv.quantities.values()) == {"ug/m3", "count/dL"}
    for key, field in PMS5003.CONFIG.items():
        assert field.help and not field.required, key
    text = (
        '[device]\nname = "t"\n[[sensor]]\nid = "pm"\ndriver = "pms5003"\n'
        'model = "pms7003"\nport = "/dev/ttyAMA0"\n'
    )
    sensor = loads(text, base_dir=tmp_path).sensors[0]
    assert sensor.options["model"] == "pms7003"
    assert PMS5003(sensor_id="pm", options=sensor.options).model == "pms7003"
    bad = text.replace("pms7003", "pms7002")
    with pytest.raises(Exception, match="did you mean 'pms7003'"):
        loads(bad, base_dir=tmp_path)


def test_open_switches_a_streaming_sensor_to_passive_mode(pms5003_link: Path) -> None:
    server = serve_pms5003(pms5003_link, mode="active", report_every=0.02)
    try:
        time.sleep(0.4)  # frames pile up in the port's buffer
        assert len(server.chip.reports) >= 5
        drv = pms5003_driver(server.path)
        drv.open()
        assert server.chip.mode == "passive"
        assert server.chip.commands[:2] == ["wake", "passive-mode"]
        for _ in range(3):
            assert values(drv.read(time.time())) == pms5003_meant(server.chip)
        assert server.chip.commands[-1] == "passive-read"
        assert drv.last is not None and drv.last.version == 0x97
        drv.close()
    finally:
        server.stop()


def test_cf1_and_atmospheric_are_not_swapped(pms5003_link: Path) -> None:
    server = serve_pms5003(pms5003_link, mode="passive", level=80.0)  # well above 30 ug/m3
    try:
        drv = pms5003_driver(server.path)
        drv.open()
        got = values(drv.read(time.time()))
        last = server.chip.last
        assert last is not None
        assert got["pm2_5"] == last.values["pm2_5"]
        assert got["pm2_5_cf1"] == last.values["pm2_5_cf1"]
        assert got["pm2_5_cf1"] is not None and got["pm2_5"] is not None
        assert got["pm2_5_cf1"] > got["pm2_5"]
        drv.close()
    finally:
        server.stop()


def test_warmup_frames_without_counts_are_discarded(pms5003_link: Path) -> None:
    server = serve_pms5003(pms5003_link, mode="passive", warmup=0.4, zero_for=0.4)
    try:
        drv = pms5003_driver(server.path)  # the driver's own warm-up is 0: the frames tell
        drv.open()
        first = drv.read(time.time())
        assert first == [Measurement(q, None, ("warmup",)) for q in pms5003.QUANTITIES]
        assert server.chip.commands[-1] == "passive-read"
        warm = server.chip.last
        assert warm is not None and warm.values["pm2_5"] > 0 and warm.values["n0_3"] == 0
        time.sleep(0.5)
        assert values(drv.read(time.time())) == pms5003_meant(server.chip)
        assert drv.counters["warmup"] == 1
        drv.close()
    finally:
        server.stop()


def test_garbage_bad_checksums_and_cut_frames_are_survived(
    pms5003_server: PtyServer[PMS5003Chip],
) -> None:
    chip = pms5003_server.chip
    drv = pms5003_driver(pms5003_server.path)
    drv.open()
    drv.counters.clear()
    chip.inject("garbage", 2)
    chip.inject("bad_checksum", 1)
    chip.inject("truncated", 1)
    for _ in range(3):
        assert values(drv.read(time.time())) == pms5003_meant(chip)
    assert drv.counters == {"resync": 2, "checksum": 1, "truncated": 1}
    chip.inject("bad_checksum", ATTEMPTS)
    with pytest.raises(SensorError, match="passive read"):
        drv.read(time.time())
    assert drv.counters["timeout"] == 1
    assert values(drv.read(time.time())) == pms5003_meant(chip)
    drv.close()


def test_silence_then_slow_bytes(pms5003_server: PtyServer[PMS5003Chip]) -> None:
    drv = pms5003_driver(pms5003_server.path, timeout=0.2)
    drv.open()
    pms5003_server.chip.silent = True
    started = time.monotonic()
    with pytest.raises(SensorError, match="no valid answer"):
        drv.read(time.time())
    assert time.monotonic() - started >= ATTEMPTS * 0.2 - 0.05
    pms5003_server.chip.silent = False
    assert values(drv.read(time.time())) == pms5003_meant(pms5003_server.chip)

    drv.timeout = 1.5
    pms5003_server.chip.byte_delay = 0.02
    started = time.monotonic()
    assert values(drv.read(time.time())) == pms5003_meant(pms5003_server.chip)
    assert time.monotonic() - started >= 31 * 0.02
    assert drv.counters == {"timeout": 1}
    drv.close()


def test_a_reset_sensor_streaming_again_is_put_back_in_passive_mode(
    pms5003_server: PtyServer[PMS5003Chip],
) -> None:
    drv = pms5003_driver(pms5003_server.path)
    drv.open()
    chip = pms5003_server.chip
    with chip.lock:  # a brown-out: back to active mode, frames pile up
        chip.report_every = 0.02
        chip.power_cycle(chip.clock())
    time.sleep(0.2)
    assert values(drv.read(time.time())) == pms5003_meant(chip)
    assert drv.counters["unsolicited"] == 1
    assert chip.mode == "passive"
    drv.close()


def test_unplug_and_replug_through_the_sampler(pms5003_link: Path) -> None:
    server = serve_pms5003(pms5003_link, mode="passive")
    drv = pms5003_driver(str(pms5003_link), timeout=0.2)
    # the replug powers it up in active mode: open() must set passive again
    out = unplug_and_replug(server, drv).out
    failed = [r for r in out if r.value is None]
    assert failed and all(r.flags == ["sensor-error"] for r in failed)
    assert {r.quantity for r in failed} == set(pms5003.QUANTITIES)
    assert out[-1].value is not None, "readings resumed after the replug"
    assert server.chip.mode == "passive"
    assert server.chip.commands.count("passive-mode") >= 2


def test_duty_cycle_sleeps_and_wakes(pms5003_link: Path) -> None:
    server = serve_pms5003(pms5003_link, mode="passive", warmup=0.15, zero_for=0.05)
    chip = server.chip
    try:
        drv = pms5003_driver(server.path, duty_cycle=True, warmup=0.3)
        drv.open()
        assert drv.read(time.time())[0].flags == ("warmup",)
        time.sleep(1.3)
        assert values(drv.read(time.time())) == pms5003_meant(chip)
        assert chip.asleep
        assert chip.commands[-2:] == ["passive-read", "sleep"]
        time.sleep(0.4)
        assert chip.asleep
        time.sleep(0.85)
        assert not chip.asleep
        assert chip.commands[-2:] == ["wake", "passive-mode"]
        time.sleep(0.05)
        assert values(drv.read(time.time())) == pms5003_meant(chip)
        assert chip.asleep
        drv.close()
    finally:
        server.stop()


def test_probe_finds_it(pms5003_link: Path, tmp_path: Path) -> None:
    from drivers.probe_serial import probe_serial

    server = serve_pms5003(pms5003_link, mode="passive")
    try:
        found = probe_serial([server.path], 1.0)
    finally:
        server.stop()
    assert [f.driver for f in found] == ["pms5003"]
    cfg = loads('[device]\nname = "t"\n' + found[0].snippet, base_dir=tmp_path)
    assert cfg.sensors[0].options["model"] == "pms5003"


def test_the_documented_sample_loads_and_lists_every_option(tmp_path: Path) -> None:
    import re

    doc = (Path(__file__).resolve().parents[2] / "docs" / "sensors" / "pms5003.md").read_text()
    sample = re.search(r"```toml\n(.*?)```", doc, flags=re.S)
    assert sample is not None
    cfg = loads('[device]\nname = "t"\n' + sample[1], base_dir=tmp_path)
    assert cfg.sensors[0].driver == "pms5003"
    for key in PMS5003.CONFIG:
        assert f"| `{key}` |" in doc, key
    for quantity in pms5003.QUANTITIES:
        assert f"`{quantity}`" in doc, quantity
