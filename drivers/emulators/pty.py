"""A serial chip emulator served over a real pseudo-terminal, so pyserial's real code path runs.

`PtyServer(chip, link=...)` opens a pty pair, puts it in raw mode and runs a thread that reads
the host's bytes from the master side, hands them to the chip and writes the chip's answers
(and, in active mode, its unsolicited frames) back. The driver opens the slave side — `.port`,
e.g. /dev/pts/5 — or better the stable symlink `link` (like a udev name, /dev/ttyUSB0).

Unplug closes the pty, so the slave path vanishes and an open port reads EIO, exactly what a
pulled USB adapter does; replug makes a NEW pty (a new /dev/pts/N) and re-points the symlink,
and the chip goes through a power cycle, as it would on the adapter's 5 V.

`SerialChip` is the base of the byte-level chip emulators. Fault modes act on what the chip
sends, where they happen in life (the wire, a confused UART): garbage bytes before a frame,
frames cut short, bad checksums, silence, and slow bytes (one at a time, `byte_delay` apart).
Garbage never contains the chip's first start byte, so a test can predict the counters exactly.
The server also checks the line settings the host chose (9600 8N1) and ignores a host that
talks at another speed, as the chip would only see noise.
"""

from __future__ import annotations

import contextlib
import os
import select
import termios
import threading
import time
import tty
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from random import Random
from types import TracebackType
from typing import ClassVar, Generic, TypeVar

__all__ = ["FAULTS", "PtyServer", "SerialChip"]

#: fault kinds that act on single frames (`SerialChip.inject`, `SerialChip.fault_rates`)
FAULTS = ("garbage", "truncated", "bad_checksum")

_TICK = 0.005  # s between the server's polls of the chip


class SerialChip(ABC):
    """A chip at the far end of a UART, at byte level.

    The server calls `receive` with the host's bytes and `tick` every few milliseconds, both
    under `lock`; each returns the bytes the chip sends. Chips build frames and pass them through
    `emit`, which applies the fault modes.
    """

    #: the first bytes of every frame the chip sends
    START: ClassVar[bytes]

    def __init__(
        self, *, seed: int = 0, warmup: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.clock = clock
        self.rng = Random(seed)
        self._fault_rng = Random(seed ^ 0x5EED_FA17)
        self.lock = threading.RLock()
        #: seconds after power-up or wake during which values are not yet stable
        self.warmup = warmup
        #: the sensor stays mute (a loose TX wire): nothing is sent, commands still act
        self.silent = False
        #: seconds between bytes on the wire (0: a whole frame at once)
        self.byte_delay = 0.0
        #: fault kind -> probability per frame, for a demo that misbehaves now and then
        self.fault_rates: dict[str, float] = {}
        #: faults applied so far, by kind ("silence" counts frames not sent)
        self.faults: Counter[str] = Counter()
        #: names of the commands received, in order ("query", "sleep", "get-state", ...)
        self.commands: list[str] = []
        #: bytes the host sent that were not a valid command
        self.bad_commands = 0
        #: host bytes received while the line was not at 9600 8N1
        self.line_errors = 0
        self._queued: list[str] = []
        self._woke_at = clock()
        self._rx = bytearray()

    # --- faults ---

    def inject(self, fault: str, count: int = 1) -> None:
        """Apply `fault` to each of the next `count` frames the chip sends."""
        if fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r} (known: {', '.join(FAULTS)})")
        with self.lock:
            self._queued.extend([fault] * count)

    def emit(self, frame: bytes) -> bytes:
        """The bytes that go on the wire for `frame`, faults applied."""
        if self.silent:
            self.faults["silence"] += 1
            return b""
        fault = self._queued.pop(0) if self._queued else self._random_fault()
        if fault is None:
            return frame
        self.faults[fault] += 1
        rng = self._fault_rng
        if fault == "garbage":
            avoid = self.START[0]
            junk = bytes(
                b for b in (rng.randrange(256) for _ in range(rng.randint(1, 16))) if b != avoid
            )
            return (junk or b"\x00") + frame
        if fault == "truncated":
            return frame[: rng.randint(len(self.START) + 1, len(frame) - 2)]
        return self.corrupt(frame)

    def _random_fault(self) -> str | None:
        for fault, p in self.fault_rates.items():
            if p > 0 and self._fault_rng.random() < p:
                return fault
        return None

    @abstractmethod
    def corrupt(self, frame: bytes) -> bytes:
        """`frame` with a checksum that no longer matches (and no new start byte)."""

    # --- what the server calls ---

    def receive(self, data: bytes, now: float) -> bytes:
        """The host sent `data`: complete commands are executed; returns the answers."""
        self._rx += data
        out = bytearray()
        while True:
            command = self._next_command()
            if command is None:
                break
            out += self.execute(command, now)
        return bytes(out)

    def _next_command(self) -> bytes | None:
        rx = self._rx
        start = self.START
        while rx:
            i = rx.find(start)
            if i < 0:
                keep = 1 if rx.endswith(start[:1]) and len(start) > 1 else 0
                self.bad_commands += len(rx) > keep
                del rx[: len(rx) - keep]
                return None
            if i:
                self.bad_commands += 1
                del rx[:i]
            n = self.command_length
            if len(rx) < n:
                return None
            command = bytes(rx[:n])
            if self.valid_command(command):
                del rx[:n]
                return command
            self.bad_commands += 1
            del rx[:1]
        return None

    #: length of every host command
    command_length: ClassVar[int]

    @abstractmethod
    def valid_command(self, command: bytes) -> bool: ...

    @abstractmethod
    def execute(self, command: bytes, now: float) -> bytes:
        """Run one checked host command; return what the chip answers (through `emit`)."""

    def tick(self, now: float) -> bytes:
        """Unsolicited output due by `now` (active mode frames)."""
        return b""

    def power_cycle(self, now: float) -> None:
        """Power off and on: volatile state back to its power-up value, warm-up restarts."""
        self._woke_at = now
        self._rx.clear()

    # --- shared model parts ---

    def warming(self, now: float) -> float | None:
        """Seconds since wake while warming up, else None."""
        age = now - self._woke_at
        return age if age < self.warmup else None


Chip = TypeVar("Chip", bound=SerialChip)


class PtyServer(Generic[Chip]):
    """Serves `chip` on a pseudo-terminal; `link` is kept pointing at the current slave."""

    def __init__(self, chip: Chip, *, link: Path | None = None) -> None:
        self.chip = chip
        self.link = link
        self._master = -1
        self._slave = -1
        self._port = ""
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        #: unplug/replug cycles so far
        self.replugs = 0

    @property
    def port(self) -> str:
        """The slave device of the current pty, e.g. /dev/pts/5 ("" while unplugged)."""
        return self._port

    @property
    def path(self) -> str:
        """What a driver should be configured with: the link if there is one."""
        return str(self.link) if self.link is not None else self._port

    @property
    def plugged(self) -> bool:
        return self._thread is not None

    def start(self) -> PtyServer[Chip]:
        if self._thread is not None:
            return self
        master, slave = os.openpty()
        try:
            tty.setraw(slave)
            tty.setraw(master)
            os.set_blocking(master, False)
            port = os.ttyname(slave)
            if self.link is not None:
                tmp = self.link.with_name(self.link.name + ".new")
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                os.symlink(port, tmp)
                os.replace(tmp, self.link)
        except BaseException:
            os.close(master)
            os.close(slave)
            raise
        self._master, self._slave, self._port = master, slave, port
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(master, slave, self._stop), name=f"pty-{port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join(timeout=5)
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._master = self._slave = -1
        self._port = ""
        if self.link is not None and self.link.is_symlink():
            self.link.unlink()

    def unplug(self) -> None:
        """Pull the adapter: the device path vanishes, an open port reads EIO."""
        self.stop()

    def replug(self) -> None:
        """Plug it back: a new pty, the link re-pointed, the chip power-cycled."""
        self.stop()
        with self.chip.lock:
            self.chip.power_cycle(self.chip.clock())
        self.replugs += 1
        self.start()

    def __enter__(self) -> PtyServer[Chip]:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # --- the thread ---

    def _run(self, master: int, slave: int, stop: threading.Event) -> None:
        chip = self.chip
        out = bytearray()
        next_byte = 0.0
        while not stop.is_set():
            wait = _TICK
            if out and chip.byte_delay > 0:
                wait = max(0.0, min(_TICK, next_byte - chip.clock()))
            try:
                ready, _, _ = select.select([master], [], [], wait)
            except (OSError, ValueError):
                return
            now = chip.clock()
            if ready:
                try:
                    data = os.read(master, 4096)
                except BlockingIOError:
                    data = b""
                except OSError:
                    return
                if data:
                    with chip.lock:
                        if _line_ok(slave):
                            out += chip.receive(data, now)
                        else:
                            chip.line_errors += len(data)
            with chip.lock:
                out += chip.tick(now)
                delay = chip.byte_delay
            if not out:
                continue
            try:
                if delay > 0:
                    if now >= next_byte:
                        del out[: os.write(master, out[:1])]
                        next_byte = now + delay
                else:
                    del out[: os.write(master, out)]
            except BlockingIOError:
                out.clear()  # nobody reads the port: the bytes are lost, like a UART overrun
            except OSError:
                return


def _line_ok(fd: int) -> bool:
    """Is the line set to 9600 baud, 8 data bits, no parity, 1 stop bit?"""
    try:
        _, _, cflag, _, ispeed, ospeed, _ = termios.tcgetattr(fd)
    except termios.error:
        return False
    return (
        ispeed == termios.B9600
        and ospeed == termios.B9600
        and cflag & termios.CSIZE == termios.CS8
        and not cflag & termios.PARENB
        and not cflag & termios.CSTOPB
    )
