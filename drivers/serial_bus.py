"""The UART under the particulate sensors: transport, frame resynchronisation, duty cycling.

Three layers, each usable alone:

- `SerialTransport` is pyserial at 9600 8N1, opened exclusively (a second program on the same
  port would steal half the bytes) with the input buffer reset (a port left open in active mode
  holds stale frames; `flush()` does not clear input, `reset_input_buffer()` does). Every
  pyserial or OS error becomes a `SensorError` naming the port, so an unplugged USB adapter is a
  transient sensor failure and `open()` works again when the device path comes back.
- `FrameParser` is pure: bytes in, checked frames out. It scans for the start bytes, reads the
  length from the header, validates the frame (checksum, tail) and on any failure drops one byte
  and rescans, so a frame hidden behind garbage or a cut-off frame is still found. What it threw
  away is counted in the driver's `counters`: "resync" (sync lost: garbage or an impossible
  header), "checksum", "truncated" (a frame that stopped early or was overrun by the next one).
- `SerialSensor` is the base of the SDS011 and PMS5003 drivers: options, one lock around the
  port, command/answer exchanges with retries, warm-up discard and duty cycling (sleep between
  reads, wake `warmup` before the next one from a timer thread).

A chip driver receives its transport; only `make_transport` here opens device paths.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import serial

from drivers.base import Measurement, SensorDriver
from gateway.core.errors import ConfigError, SensorError
from gateway.core.fields import Field
from gateway.core.units import parse_duration

__all__ = [
    "ATTEMPTS",
    "BAUDRATE",
    "DUTY_FACTOR",
    "FRAME_GAP",
    "FrameParser",
    "FrameReader",
    "FrameSpec",
    "Sample",
    "SerialSensor",
    "SerialTransport",
    "Transport",
    "make_transport",
    "resolve_options",
    "serial_config",
]

BAUDRATE = 9600  # both chips: 9600 baud, 8 data bits, no parity, 1 stop bit
POLL = 0.02  # s, pyserial read timeout of one poll while waiting for bytes
WRITE_TIMEOUT = 1.0  # s, a command of 7-19 bytes takes ~20 ms at 9600 baud
# A frame whose bytes stop arriving for this long was cut short (at 9600 baud the bytes of a
# frame come ~1 ms apart; even a very slow adapter stays far below this).
FRAME_GAP = 0.5
ATTEMPTS = 3  # tries of one command/answer exchange before the read fails
# Duty cycling pays off when the sensor can sleep most of the time: an interval of at least
# DUTY_FACTOR x warmup (2 min at the default 30 s warm-up). 5 % slack absorbs scheduling jitter.
DUTY_FACTOR = 4.0
_DUTY_SLACK = 0.95
# Wake this fraction of the warm-up earlier than strictly needed, and let a read that comes a
# little early wait out the rest of the warm-up instead of discarding the reading.
_WAKE_MARGIN = 0.1
_WAIT_FRACTION = 0.25


# --------------------------------------------------------------------------- transport


class Transport(Protocol):
    """What a chip driver needs from its serial line."""

    @property
    def port(self) -> str: ...

    def open(self) -> None: ...

    def close(self) -> None: ...

    def write(self, data: bytes) -> None: ...

    def read(self, size: int, timeout: float) -> bytes:
        """At least one byte and at most `size`, or b"" after `timeout` seconds of silence."""
        ...

    def waiting(self) -> int:
        """Bytes received and not read yet."""
        ...

    def reset_input(self) -> None: ...


class SerialTransport:
    """A serial port through pyserial; every failure is a SensorError naming the port."""

    def __init__(self, port: str, *, baudrate: int = BAUDRATE) -> None:
        self._port = port
        self.baudrate = baudrate
        self._ser: Any = None

    @property
    def port(self) -> str:
        return self._port

    @property
    def is_open(self) -> bool:
        return self._ser is not None

    def open(self) -> None:
        self.close()
        try:
            ser = serial.Serial(
                self._port,
                baudrate=self.baudrate,
                bytesize=serial.EIGHTBITS,
                parity=serial.PARITY_NONE,
                stopbits=serial.STOPBITS_ONE,
                timeout=POLL,
                write_timeout=WRITE_TIMEOUT,
                exclusive=True,
            )
        except (serial.SerialException, OSError, ValueError) as e:
            raise SensorError(f"{self._port}: cannot open: {_reason(e)}") from e
        try:
            ser.reset_input_buffer()
        except (serial.SerialException, OSError) as e:
            ser.close()
            raise SensorError(f"{self._port}: cannot reset the input buffer: {_reason(e)}") from e
        self._ser = ser

    def close(self) -> None:
        ser, self._ser = self._ser, None
        if ser is not None:
            # a vanished device cannot be closed more than it already is
            with contextlib.suppress(serial.SerialException, OSError):
                ser.close()

    def _open_port(self) -> Any:
        if self._ser is None:
            raise SensorError(f"{self._port}: not open")
        return self._ser

    def write(self, data: bytes) -> None:
        ser = self._open_port()
        try:
            ser.write(data)
        except (serial.SerialException, OSError) as e:
            raise SensorError(f"{self._port}: write failed: {_reason(e)}") from e

    def read(self, size: int, timeout: float) -> bytes:
        ser = self._open_port()
        end = time.monotonic() + timeout
        try:
            while True:
                data: bytes = ser.read(1)
                if data:
                    more = min(ser.in_waiting, size - 1)
                    return data + ser.read(more) if more > 0 else data
                if time.monotonic() >= end:
                    return b""
        except (serial.SerialException, OSError) as e:
            raise SensorError(f"{self._port}: read failed: {_reason(e)}") from e

    def waiting(self) -> int:
        ser = self._open_port()
        try:
            return int(ser.in_waiting)
        except (serial.SerialException, OSError) as e:
            raise SensorError(f"{self._port}: {_reason(e)}") from e

    def reset_input(self) -> None:
        ser = self._open_port()
        try:
            ser.reset_input_buffer()
        except (serial.SerialException, OSError) as e:
            raise SensorError(f"{self._port}: {_reason(e)}") from e


def _reason(e: BaseException) -> str:
    text = str(e)
    return text or type(e).__name__


def make_transport(port: str) -> Transport:
    """The transport a driver uses for its `port` option (opened by the driver's open())."""
    return SerialTransport(port)


# --------------------------------------------------------------------------- frames


@dataclass(frozen=True)
class FrameSpec:
    """How one chip frames what it sends.

    `length(header)` is the whole frame's length from its first `header_len` bytes, or None when
    those bytes cannot start a frame; `check(frame)` is None for a good frame, else the counter
    to bump ("checksum", or "resync" for a bad tail).
    """

    name: str
    start: bytes
    header_len: int
    length: Callable[[bytes], int | None]
    check: Callable[[bytes], str | None]


class FrameParser:
    """Checked frames out of an arbitrary byte stream; never raises, never yields a bad frame."""

    def __init__(self, spec: FrameSpec, counters: Counter[str] | None = None) -> None:
        self.spec = spec
        self.counters: Counter[str] = counters if counters is not None else Counter()
        #: frames rejected so far (checksum, framing, truncated)
        self.rejected = 0
        self._buf = bytearray()
        # Sync is lost: garbage being skipped belongs to a failure already counted.
        self._lost = False

    @property
    def pending(self) -> int:
        """Bytes held back as the possible start of a frame."""
        return len(self._buf)

    def reset(self) -> None:
        """Forget held-back bytes without counting them (the input buffer was reset)."""
        self._buf.clear()
        self._lost = False

    def feed(self, data: bytes) -> list[bytes]:
        spec = self.spec
        start = spec.start
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while buf:
            i = buf.find(start)
            if i < 0:
                self._skip(len(buf) - _partial_start(buf, start))
                break
            if i:
                self._skip(i)
            if len(buf) < spec.header_len:
                break
            n = spec.length(bytes(buf[: spec.header_len]))
            if n is None:  # start bytes by chance, not a header
                self._skip(1)
                continue
            if len(buf) < n:
                break
            frame = bytes(buf[:n])
            problem = spec.check(frame)
            if problem is None:
                out.append(frame)
                del buf[:n]
                self._lost = False
                continue
            self._reject("truncated" if self._starts_inside(frame) else problem)
            del buf[:1]
        return out

    def drop_partial(self) -> None:
        """The line went quiet in the middle of a frame: it was cut short."""
        if len(self._buf) >= len(self.spec.start):
            self._reject("truncated")
        elif self._buf:
            self._skip(len(self._buf))
        self._buf.clear()

    def _skip(self, n: int) -> None:
        if n <= 0:
            return
        del self._buf[:n]
        if not self._lost:
            self.counters["resync"] += 1
            self._lost = True

    def _reject(self, kind: str) -> None:
        self.counters[kind] += 1
        self.rejected += 1
        self._lost = True

    def _starts_inside(self, frame: bytes) -> bool:
        """Does another frame start inside this failed one (it was overrun by the next)?"""
        spec = self.spec
        p = frame.find(spec.start, 1)
        while p > 0:
            rest = frame[p:]
            if len(rest) < spec.header_len or spec.length(rest[: spec.header_len]) is not None:
                return True
            p = frame.find(spec.start, p + 1)
        return False


def _partial_start(buf: bytearray, start: bytes) -> int:
    """Length of the longest proper prefix of `start` that `buf` ends with."""
    for k in range(len(start) - 1, 0, -1):
        if buf.endswith(start[:k]):
            return k
    return 0


class FrameReader:
    """Frames from a transport: waits up to a timeout, detects cut-off frames by the gap."""

    def __init__(self, transport: Transport, parser: FrameParser, *, gap: float = FRAME_GAP):
        self.transport = transport
        self.parser = parser
        self.gap = gap
        self._frames: deque[bytes] = deque()

    def flush(self) -> None:
        """Discard everything received so far (before sending a command)."""
        self.transport.reset_input()
        self.parser.reset()
        self._frames.clear()

    def read_frame(self, want: Callable[[bytes], bool], timeout: float) -> bytes | None:
        """The first good frame that `want` accepts (others are skipped), or None after
        `timeout`, or as soon as a frame was rejected or cut off (then re-asking is best)."""
        parser = self.parser
        deadline = time.monotonic() + timeout
        last_byte = time.monotonic()
        while True:
            while self._frames:
                frame = self._frames.popleft()
                if want(frame):
                    return frame
            now = time.monotonic()
            if now >= deadline:
                if parser.pending:
                    parser.drop_partial()
                return None
            until = deadline
            if parser.pending:
                until = min(deadline, last_byte + self.gap)
            data = self.transport.read(256, max(0.0, until - now))
            if data:
                last_byte = time.monotonic()
                rejected = parser.rejected
                self._frames.extend(parser.feed(data))
                if parser.rejected != rejected and not any(want(f) for f in self._frames):
                    return None
            elif parser.pending and time.monotonic() >= last_byte + self.gap:
                parser.drop_partial()
                return None


# --------------------------------------------------------------------------- options


def _device_path(value: str) -> str | None:
    if not value.startswith("/"):
        return f"expected an absolute device path like /dev/serial0 or /dev/ttyUSB0, got {value!r}"
    return None


def serial_config(default_port: str) -> dict[str, Field]:
    """The options every UART particulate sensor has."""
    return {
        "port": Field(
            "str",
            "serial device: /dev/serial0 (the Pi's GPIO UART) or /dev/ttyUSB0 (USB adapter); "
            "better a stable name such as /dev/serial/by-id/...",
            default=default_port,
            check=_device_path,
        ),
        "timeout": Field(
            "duration",
            f"how long to wait for an answer; a read fails after {ATTEMPTS} tries",
            default="2 s",
            min=0.05,
            max=60.0,
        ),
        "duty_cycle": Field(
            "bool",
            f"sleep between reads when the interval is at least {DUTY_FACTOR:g} x warmup "
            "(fan and laser last ~8000 h running continuously)",
            default=True,
        ),
        "warmup": Field(
            "duration",
            "readings this soon after a wake (or open) are discarded, flag warmup; a "
            "duty-cycled sensor is woken this long before its next read",
            default="30 s",
            min=0.0,
            max=600.0,
        ),
    }


def resolve_options(
    config: Mapping[str, Field], options: Mapping[str, Any], *, source: str
) -> dict[str, Any]:
    """Options as the config loader would hand them over: defaults filled in, durations in
    seconds (so a driver built directly, as in tests, behaves like one built from a file)."""
    unknown = [k for k in options if k not in config]
    if unknown:
        raise ConfigError([f"{k}: unknown option" for k in unknown], source=source)
    out: dict[str, Any] = {}
    for key, field in config.items():
        value = options.get(key, field.default)
        if field.kind == "duration" and isinstance(value, str | int | float):
            value = parse_duration(value)
        out[key] = value
    return out


# --------------------------------------------------------------------------- the driver base


@dataclass(frozen=True)
class Sample:
    """One decoded data frame: values by quantity, and what the frame says about warm-up:
    None (good), "zero" (all-zero payload: warm-up unless data was seen since the wake) or
    "warmup" (inconsistent, e.g. PM without particle counts: always discarded)."""

    values: Mapping[str, float]
    warm: str | None = None


class SerialSensor(SensorDriver):
    """A particulate sensor on a UART: command/answer exchanges, warm-up, duty cycling.

    Subclasses set FRAME and implement `_configure` (put the sensor in the mode we poll it in and
    make sure it is awake), `_reassert_mode` (the polling mode alone), `_wake`, `_sleep` (True
    when the sensor confirmed it sleeps) and `_measure`. Every method runs under one lock: the
    sampler's worker thread and the wake timer never talk over each other.
    """

    FRAME: ClassVar[FrameSpec]
    blocking = True

    def __init__(
        self,
        *,
        sensor_id: str,
        options: Mapping[str, Any],
        transport: Transport | None = None,
    ) -> None:
        full = resolve_options(self.CONFIG, options, source=f"sensor {sensor_id!r} ({self.name})")
        super().__init__(sensor_id=sensor_id, options=full)
        self.port: str = str(full["port"])
        self.timeout = float(full["timeout"])
        self.warmup = float(full["warmup"])
        self.duty_cycle = bool(full["duty_cycle"])
        self.transport: Transport = (
            transport if transport is not None else make_transport(self.port)
        )
        self.parser = FrameParser(self.FRAME, self.counters)
        self.reader = FrameReader(self.transport, self.parser)
        self._lock = threading.RLock()
        self._opened = False
        self._awake_since: float | None = None  # monotonic time of the last wake; None: asleep
        self._seen_data = False  # a non-zero data frame since the last wake
        self._last_read: float | None = None
        self._interval: float | None = None  # observed time between the sampler's reads
        self._timer: threading.Timer | None = None
        self._wake_token = 0

    # --- hooks for the chip drivers ---

    def _configure(self) -> None:
        raise NotImplementedError

    def _reassert_mode(self) -> None:
        """Put the sensor back in the mode it is polled in (it was found streaming)."""
        raise NotImplementedError

    def _wake(self) -> None:
        raise NotImplementedError

    def _sleep(self) -> bool:
        raise NotImplementedError

    def _measure(self) -> Sample:
        raise NotImplementedError

    # --- helpers for the chip drivers ---

    def exchange(self, command: bytes, want: Callable[[bytes], bool], what: str) -> bytes:
        """Send `command` and return the answer `want` accepts; re-sends on silence, a bad or a
        cut-off answer. Raises SensorError after ATTEMPTS tries."""
        for _ in range(ATTEMPTS):
            self.reader.flush()
            self.transport.write(command)
            frame = self.reader.read_frame(want, self.timeout)
            if frame is not None:
                return frame
        self.counters["timeout"] += 1
        raise SensorError(
            f"{self.port}: no valid answer to {what} ({ATTEMPTS} tries, {self.timeout:g} s each)"
        )

    def send(self, command: bytes) -> None:
        """A command the chip does not answer."""
        self.reader.flush()
        self.transport.write(command)

    def _woke(self) -> None:
        self._awake_since = time.monotonic()
        self._seen_data = False

    @property
    def awake(self) -> bool:
        return self._awake_since is not None

    @property
    def cycling(self) -> bool:
        """Whether the sensor sleeps between reads (duty_cycle on and a long enough interval)."""
        return (
            self.duty_cycle
            and self._interval is not None
            and self._interval >= DUTY_FACTOR * self.warmup * _DUTY_SLACK
        )

    # --- the driver interface ---

    def open(self) -> None:
        with self._lock:
            self._cancel_wake()
            self.transport.open()
            self._opened = True
            self._last_read = self._interval = None
            try:
                self._configure()
            except BaseException:
                self._close_port()
                raise

    def read(self, now: float) -> list[Measurement]:
        with self._lock:
            if not self._opened:
                raise SensorError(f"{self.port}: not open")
            t = time.monotonic()
            if self._last_read is not None:
                self._interval = t - self._last_read
            self._last_read = t
            self._cancel_wake()
            if self.transport.waiting():
                # Frames nobody asked for: the sensor was reset into its power-up mode. Its
                # warm-up frames, if any, are caught by their content.
                self.counters["unsolicited"] += 1
                self._reassert_mode()
            if self._awake_since is None:
                self._wake()
                self._woke()
            out = self._sample()
            if self.cycling:
                self._go_to_sleep()
            return out

    def close(self) -> None:
        with self._lock:
            self._cancel_wake()
            if self._opened and self.cycling and self._awake_since is not None:
                # leave a duty-cycled sensor asleep while the gateway is down
                with contextlib.suppress(SensorError):
                    self._sleep()
            self._close_port()

    # --- internals ---

    def _close_port(self) -> None:
        self._opened = False
        self._awake_since = None
        self.transport.close()

    def _discarded(self, flag: str) -> list[Measurement]:
        return [Measurement(q, None, (flag,)) for q in self.quantities]

    def _sample(self) -> list[Measurement]:
        assert self._awake_since is not None
        left = self.warmup - (time.monotonic() - self._awake_since)
        if left > 0:
            if left > _WAIT_FRACTION * self.warmup:
                self.counters["warmup"] += 1
                return self._discarded("warmup")
            time.sleep(left)  # a read a little early waits instead of losing the reading
        sample = self._measure()
        if sample.warm == "warmup" or (sample.warm == "zero" and not self._seen_data):
            self.counters["warmup"] += 1
            return self._discarded("warmup")
        if sample.warm is None:
            self._seen_data = True
        return [Measurement(q, float(sample.values[q])) for q in self.quantities]

    def _go_to_sleep(self) -> None:
        assert self._interval is not None
        try:
            asleep = self._sleep()
        except SensorError:
            # The reading is good; the next read finds out whether the sensor is still there.
            self.counters["sleep-failed"] += 1
            return
        if not asleep:
            return
        self._awake_since = None
        delay = self._interval - self.warmup * (1.0 + _WAKE_MARGIN)
        self._wake_token += 1
        token = self._wake_token
        timer = threading.Timer(max(0.0, delay), self._timed_wake, args=(token,))
        timer.daemon = True
        timer.name = f"wake-{self.sensor_id}"
        self._timer = timer
        timer.start()

    def _timed_wake(self, token: int) -> None:
        with self._lock:
            if token != self._wake_token or not self._opened or self._awake_since is not None:
                return
            self._timer = None
            try:
                self._wake()
            except SensorError:
                self.counters["wake-failed"] += 1  # read() will try again
                return
            self._woke()

    def _cancel_wake(self) -> None:
        self._wake_token += 1
        timer, self._timer = self._timer, None
        if timer is not None:
            timer.cancel()
