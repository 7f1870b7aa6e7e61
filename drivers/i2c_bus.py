"""I2C transport over smbus2, and the base class of the I2C chip drivers.

Two transfer shapes cover the supported chips:

- register parts (BME280): one combined transfer, write the register address then read n bytes
  with a repeated start (`i2c_rdwr(write, read)`), and register writes as (address, value);
- command parts (Sensirion SCD4x, SHT4x): a write of the command, a sleep of the datasheet's
  execution time, then a *separate* read. They have no register address, so smbus block reads
  (which write one) are wrong for them, and a combined write+read leaves no time to execute.

A refused transfer (NACK: errno 121 EREMOTEIO) or a bus error (errno 5 EIO, 110 ETIMEDOUT) is
retried with exponential backoff and counted in the driver's `counters`; after the last retry the
transfer raises SensorError. Every other error raises at once.

A chip driver never opens a device itself: `open_transport()` builds its transport from the
`bus` and `address` options, and tests inject one instead. `bus = "emulated"` (for demos and
tests) serves the address from the process-wide registry of byte-level chip emulators in
`drivers.emulators.i2c`, so the real driver code runs without hardware.
"""

from __future__ import annotations

import difflib
import errno
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol

from smbus2 import SMBus, i2c_msg

from drivers.base import SensorDriver
from gateway.core.errors import ConfigError, SensorError
from gateway.core.fields import Field
from gateway.core.units import parse_duration

__all__ = [
    "BUS_FIELD",
    "EMULATED",
    "I2CDriver",
    "I2CTransport",
    "SMBusLike",
    "bus_path",
    "check_bus",
    "open_transport",
    "validated_options",
]

#: the `bus` value that serves chips from the emulator registry (demos and tests)
EMULATED = "emulated"

#: errno -> counter name for the errors worth retrying; anything else fails at once
_RETRYABLE: Mapping[int, str] = {
    errno.EREMOTEIO: "nack",  # 121: no ACK (address or data), what the Pi reports for a NACK
    errno.EIO: "io_error",  # 5: arbitration lost, glitches on a long cable
    errno.ETIMEDOUT: "io_error",  # 110: the controller timed out (clock stretched too long)
}

DEFAULT_RETRIES = 3  # after the first attempt: 4 attempts in all
DEFAULT_BACKOFF = 0.002  # seconds before the first retry, doubled for each further one
MAX_BACKOFF = 0.1


class SMBusLike(Protocol):
    """The part of smbus2.SMBus the transport uses; the emulators provide the same."""

    def i2c_rdwr(self, *i2c_msgs: Any) -> None: ...

    def close(self) -> None: ...


class I2CTransport:
    """One chip at one address on one bus, with retries.

    `counters` is the owning driver's (it adopts the transport and rebinds it); `wait` is the
    sleep used for execution times and backoff, injectable so emulated tests run without delay.
    """

    def __init__(
        self,
        bus: SMBusLike,
        address: int,
        *,
        label: str = "",
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        wait: Callable[[float], None] = time.sleep,
        counters: Counter[str] | None = None,
        owns_bus: bool = True,
    ) -> None:
        if not 0x03 <= address <= 0x77:
            raise ValueError(f"I2C address 0x{address:02x} is outside 0x03..0x77")
        self.bus: SMBusLike | None = bus
        self.address = address
        self.label = label or f"i2c@0x{address:02x}"
        self.retries = retries
        self.backoff = backoff
        self.wait = wait
        self.counters: Counter[str] = Counter() if counters is None else counters
        self._owns_bus = owns_bus

    def __repr__(self) -> str:
        return f"I2CTransport({self.label})"

    # --- transfers ---

    def _transfer(self, *msgs: Any) -> None:
        attempt = 0
        while True:
            bus = self.bus
            if bus is None:
                raise SensorError(f"{self.label}: transport is closed")
            try:
                bus.i2c_rdwr(*msgs)
                return
            except SensorError:
                raise
            except OSError as exc:
                kind = _RETRYABLE.get(exc.errno or 0)
                if kind is None:
                    raise SensorError(f"{self.label}: {exc.strerror or exc}") from exc
                self.counters[kind] += 1
                if attempt >= self.retries:
                    what = "no ACK" if kind == "nack" else (exc.strerror or str(exc))
                    raise SensorError(
                        f"{self.label}: {what} after {attempt + 1} attempts "
                        f"(errno {exc.errno}); is the sensor connected?"
                    ) from exc
                self.counters["retry"] += 1
                self.wait(min(MAX_BACKOFF, self.backoff * (1 << attempt)))
                attempt += 1

    def read_register(self, register: int, length: int) -> bytes:
        """`length` bytes from `register` on: write the address, repeated start, read."""
        read = i2c_msg.read(self.address, length)
        self._transfer(i2c_msg.write(self.address, [register]), read)
        return bytes(read)

    def write_register(self, register: int, value: int) -> None:
        self._transfer(i2c_msg.write(self.address, [register, value & 0xFF]))

    def write(self, data: bytes) -> None:
        """One write transfer (a Sensirion command, with its argument words)."""
        self._transfer(i2c_msg.write(self.address, data))

    def read(self, length: int) -> bytes:
        """One read transfer on its own (a Sensirion response)."""
        msg = i2c_msg.read(self.address, length)
        self._transfer(msg)
        return bytes(msg)

    def command(self, data: bytes, *, delay: float, length: int = 0) -> bytes:
        """Write a command, sleep its execution time, then read `length` bytes (if any).

        The write and the read are retried separately: a chip still busy NACKs the read, and
        retrying only the read does not start a second measurement."""
        self.write(data)
        if delay > 0:
            self.wait(delay)
        return self.read(length) if length else b""

    def close(self) -> None:
        bus, self.bus = self.bus, None
        if bus is not None and self._owns_bus:
            bus.close()


# --- opening a bus -----------------------------------------------------------------------------

_DEV = re.compile(r"^/dev/i2c-(\d+)$")


def check_bus(value: Any) -> str | None:
    """Config check of the `bus` option: a bus number, a /dev/i2c-N path or "emulated"."""
    if isinstance(value, int) and not isinstance(value, bool):
        return None if value >= 0 else f"bus number must not be negative, got {value}"
    if isinstance(value, str) and (value == EMULATED or value.isdigit() or _DEV.match(value)):
        return None
    hint = ""
    if isinstance(value, str) and (close := difflib.get_close_matches(value, [EMULATED], n=1)):
        hint = f"; did you mean {close[0]!r}?"
    return f'expected a bus number like "1", a path like "/dev/i2c-1" or "emulated"{hint}'


def bus_path(bus: int | str) -> str:
    """The device node of a bus number: 1 and "1" -> /dev/i2c-1; paths pass through."""
    if isinstance(bus, int) or bus.isdigit():
        return f"/dev/i2c-{int(bus)}"
    return bus


# "device" fields take `bus = 1` and `bus = "/dev/i2c-3"` alike and hand over text.
BUS_FIELD = Field(
    "device",
    "I2C bus: 1 is /dev/i2c-1 on the Pi's header pins (SDA GPIO2, SCL GPIO3), a path like "
    '"/dev/i2c-3" works too; "emulated" serves a byte-level chip emulator (for demos and tests)',
    default="1",
    check=check_bus,
)


def open_transport(
    bus: int | str,
    address: int,
    *,
    chip: str | None = None,
    counters: Counter[str] | None = None,
    retries: int = DEFAULT_RETRIES,
    wait: Callable[[float], None] | None = None,
) -> I2CTransport:
    """A transport to `address` on `bus`. For `bus = "emulated"`, `chip` names the emulator the
    registry creates at that address when none is attached there yet (None: only the default
    set)."""
    if bus == EMULATED:
        from drivers.emulators import i2c as emulated  # only for demos and tests

        if chip is not None:
            emulated.ensure(address, chip)
        return I2CTransport(
            emulated.bus(),
            address,
            label=f"emulated@0x{address:02x}",
            retries=retries,
            wait=wait or emulated.clock().sleep,
            counters=counters,
            owns_bus=False,
        )
    path = bus_path(bus)
    label = f"{path.removeprefix('/dev/')}@0x{address:02x}"
    try:
        raw = SMBus(path)
    except FileNotFoundError:
        raise SensorError(
            f"{path} does not exist: enable I2C (dtparam=i2c_arm=on in /boot/firmware/config.txt "
            "or `sudo raspi-config nonint do_i2c 0`, then reboot)"
        ) from None
    except PermissionError:
        raise SensorError(
            f"{path}: permission denied; add the gateway's user to the group i2c"
        ) from None
    except OSError as exc:
        raise SensorError(f"{path}: {exc.strerror or exc}") from exc
    return I2CTransport(
        raw, address, label=label, retries=retries, wait=wait or time.sleep, counters=counters
    )


# --- options of a driver built from Python --------------------------------------------------


def validated_options(
    cls: type[SensorDriver], sensor_id: str, options: Mapping[str, Any]
) -> dict[str, Any]:
    """`options` with defaults filled in, checked against `cls.CONFIG` (and the class's own
    `check_config` rules) the way the config loader checks a `[[sensor]]` table, for drivers
    built directly in Python. Raises ConfigError naming every problem."""
    fields = cls.CONFIG
    problems: list[str] = []
    out: dict[str, Any] = {}
    for key in options:
        if key not in fields:
            close = difflib.get_close_matches(key, list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(fields)}"
            problems.append(f"{key}: unknown option{hint}")
    for key, field in fields.items():
        value = options.get(key, field.default)
        if field.kind == "duration" and isinstance(value, str):
            try:
                value = parse_duration(value)
            except ValueError as exc:
                problems.append(f"{key}: {exc}")
                continue
        problem = _field_problem(field, value)
        if problem is not None:
            problems.append(f"{key}: {problem}")
        out[key] = value
    if not problems:
        hook = getattr(cls, "check_config", None)
        if hook is not None:
            problems += [str(p) for p in hook(out)]
    if problems:
        raise ConfigError(problems, source=f"sensor {sensor_id!r} ({cls.name})")
    return out


def _field_problem(field: Field, value: Any) -> str | None:
    kind = field.kind
    if field.check is not None and kind == "str":
        return field.check(value)  # the check knows the accepted types (the bus takes ints too)
    numeric = kind in ("int", "float", "duration")
    if kind == "bool" and not isinstance(value, bool):
        return f"expected true or false, got {value!r}"
    if numeric and (isinstance(value, bool) or not isinstance(value, int | float)):
        return f"expected a number, got {value!r}"
    if kind == "int" and not isinstance(value, int):
        return f"expected an integer, got {value!r}"
    if kind == "str" and not isinstance(value, str):
        return f"expected a string, got {value!r}"
    if field.choices is not None and value not in field.choices:
        return f"{value!r} is not one of {', '.join(map(repr, field.choices))}"
    if numeric and field.min is not None and value < field.min:
        return f"{value!r} is below the minimum {field.min:g}"
    if numeric and field.max is not None and value > field.max:
        return f"{value!r} is above the maximum {field.max:g}"
    return field.check(value) if field.check is not None else None


# --- the base of the I2C chip drivers --------------------------------------------------------


class I2CDriver(SensorDriver):
    """Options checked, a transport built from `bus`/`address` at open() (or injected), the
    transport's retries counted in this driver's `counters`, and close() safe at any time."""

    #: the emulator `bus = "emulated"` creates at an empty address for this driver
    emulated_chip: ClassVar[str]

    def __init__(
        self,
        *,
        sensor_id: str,
        options: Mapping[str, Any],
        transport: I2CTransport | None = None,
    ) -> None:
        super().__init__(
            sensor_id=sensor_id, options=validated_options(type(self), sensor_id, options)
        )
        self._injected = transport
        self._transport: I2CTransport | None = None
        if transport is not None:
            transport.counters = self.counters

    @property
    def address(self) -> int:
        return int(self.options["address"])

    @property
    def transport(self) -> I2CTransport:
        if self._transport is None:
            raise SensorError(f"sensor {self.sensor_id!r} is not open")
        return self._transport

    def _chip_for_emulation(self) -> str:
        return self.emulated_chip

    def open(self) -> None:
        if self._transport is None:
            self._transport = self._injected or open_transport(
                self.options["bus"],
                self.address,
                chip=self._chip_for_emulation(),
                counters=self.counters,
            )
        try:
            self.setup()
        except BaseException:
            self.close()
            raise

    def setup(self) -> None:
        """Identify and configure the chip on a freshly opened transport."""

    def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None and transport is not self._injected:
            transport.close()
