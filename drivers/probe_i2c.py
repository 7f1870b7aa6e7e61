"""Find the supported I2C chips on some buses, by their identity, not just their address.

An address that ACKs says little (0x76 is also a BMP180's, 0x44 an SHT3x's), so each candidate
must answer the way its chip does:

- 0x76, 0x77: register 0xD0 reads 0x60 (BME280) or 0x58 (BMP280);
- 0x62: get_serial_number answers three words with valid CRCs (SCD4x). A chip still measuring
  NACKs it, so the probe then stops the periodic measurement (500 ms) and asks again: run the
  probe with the gateway stopped;
- 0x44, 0x45: the serial-number command 0x89 answers two words with valid CRCs (SHT4x).

Each find carries a ready-to-paste `[[sensor]]` table that passes `depin-gateway config check`.
Works on `"emulated"` too (the emulator registry's default set answers there).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from drivers import bme280, scd4x, sht4x
from drivers.i2c_bus import I2CTransport, open_transport
from drivers.sensirion import unpack_words
from gateway.core.errors import SensorError

__all__ = ["Found", "probe_i2c", "render_toml"]


@dataclass(frozen=True)
class Found:
    """One identified chip and the `[[sensor]]` table that reads it."""

    bus: int | str
    address: int
    chip: str  # "BME280", "BMP280", "SCD4x" (or "SCD40"/"SCD41"/"SCD43"), "SHT4x"
    driver: str  # registered driver name
    detail: str  # serial number, variant, ...
    sensor_id: str
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def snippet(self) -> str:
        """The `[[sensor]]` table, ready to paste into the configuration."""
        return render_toml(self.sensor_id, self.driver, self.options, comment=self.describe())

    def describe(self) -> str:
        return f"{self.chip} on bus {self.bus} at 0x{self.address:02x}" + (
            f" ({self.detail})" if self.detail else ""
        )


def _toml_value(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if key == "address" and isinstance(value, int):
        return f"0x{value:02x}"
    if isinstance(value, int | float):
        return repr(value)
    if key == "bus" and isinstance(value, str) and value.isdigit():
        return value  # bus = 1, as a person writes it
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_toml(
    sensor_id: str, driver: str, options: Mapping[str, Any], *, comment: str = ""
) -> str:
    lines = [f"# {comment}"] if comment else []
    lines += ["[[sensor]]", f'id = "{sensor_id}"', f'driver = "{driver}"']
    lines += [f"{k} = {_toml_value(k, v)}" for k, v in options.items()]
    return "\n".join(lines) + "\n"


def _quiet(fn: Callable[[], Any]) -> Any:
    """fn() or None when the chip does not answer (NACK, bus error, wrong reply)."""
    try:
        return fn()
    except (SensorError, ValueError):
        return None


def _bme280(t: I2CTransport) -> tuple[str, str] | None:
    data = _quiet(lambda: t.read_register(bme280.REG_CHIP_ID, 1))
    if data is None:
        return None
    if data[0] == bme280.CHIP_ID_BME280:
        return "BME280", "chip id 0x60"
    if data[0] == bme280.CHIP_ID_BMP280:
        return "BMP280", "chip id 0x58, no humidity"
    return None


def _scd4x(t: I2CTransport) -> tuple[str, str] | None:
    def serial() -> int:
        return scd4x.decode_serial(
            t.command(scd4x.command(scd4x.GET_SERIAL_NUMBER), delay=scd4x.T_COMMAND, length=9)
        )

    number = _quiet(serial)
    if number is None:
        # Perhaps still measuring (it then NACKs the command): stop, wait 500 ms, ask again.
        if (
            _quiet(lambda: t.command(scd4x.command(scd4x.STOP_PERIODIC), delay=scd4x.T_STOP))
            is None
        ):
            return None
        number = _quiet(serial)
        if number is None:
            return None
    variant = _quiet(
        lambda: scd4x.decode_variant(
            t.command(scd4x.command(scd4x.GET_SENSOR_VARIANT), delay=scd4x.T_COMMAND, length=3)
        )
    )
    chip = variant.upper() if isinstance(variant, str) else "SCD4x"
    return chip, f"serial {number:012x}"


def _sht4x(t: I2CTransport) -> tuple[str, str] | None:
    data = _quiet(lambda: t.command(bytes((sht4x.READ_SERIAL,)), delay=sht4x.T_SERIAL, length=6))
    if data is None:
        return None
    words = _quiet(lambda: unpack_words(data, 2))
    if words is None:
        return None
    return "SHT4x", f"serial {(words[0] << 16) | words[1]:08x}"


_CANDIDATES: tuple[tuple[int, str, Callable[[I2CTransport], tuple[str, str] | None]], ...] = (
    (0x44, "sht4x", _sht4x),
    (0x45, "sht4x", _sht4x),
    (0x62, "scd4x", _scd4x),
    (0x76, "bme280", _bme280),
    (0x77, "bme280", _bme280),
)


def probe_i2c(
    buses: list[int | str], *, wait: Callable[[float], None] | None = None
) -> list[Found]:
    """The supported chips found on `buses` (numbers, /dev/i2c-N paths or "emulated"), in bus
    and address order. Raises SensorError when a bus cannot be opened."""
    found: list[Found] = []
    unique = list(dict.fromkeys(buses))  # each bus once
    several = len(unique) > 1
    for bus in unique:
        bus_option = str(bus)
        for address, driver, identify in _CANDIDATES:
            t = open_transport(bus, address, retries=1, wait=wait)
            try:
                answer = identify(t)
            finally:
                t.close()
            if answer is None:
                continue
            chip, detail = answer
            options: dict[str, Any] = {"bus": bus_option, "address": address}
            if chip == "BMP280":
                options["model"] = "bmp280"
            if driver == "scd4x" and chip != "SCD4x":
                options["variant"] = chip.lower()
            base = chip.lower() if driver == "bme280" else driver
            suffix = (
                f"{bus_option.rsplit('-', 1)[-1]}-{address:02x}" if several else f"{address:02x}"
            )
            found.append(
                Found(
                    bus=bus,
                    address=address,
                    chip=chip,
                    driver=driver,
                    detail=detail,
                    sensor_id=f"{base}-{suffix}",
                    options=options,
                )
            )
    return found
