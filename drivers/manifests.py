"""The built-in drivers' manifests: what each chip reports, with the facts about it the detection
modules judge readings by, where its code, sample and page are.

The entry points of `depin_gateway.drivers` name these (`sds011 = "drivers.manifests:SDS011"`).
They live here, apart from the drivers' code, and name their factories instead of importing
them: every start reads every driver's manifest (the rule modules take each quantity's
resolution and range from all of them), and importing every driver with its bus library would
slow each start by tens of milliseconds. This module imports nothing but the manifest type.

Resolution and range are the chips' datasheet figures, with two kinds of exception noted where
they occur: a figure rounded to the step the rules have always judged the quantity by, and a
quantity whose facts are not stated yet. Stating or changing one changes the modules' verdicts
(each batch names the version of the modules that judged it), so it is a change of its own.

Each driver's sample (`<name>.sample.toml`) lies beside its code; its README is its page in
docs/sensors/.
"""

from __future__ import annotations

from gateway.core.manifest import Manifest, Quantity

BME280 = Manifest(
    name="bme280",
    kind="driver",
    factory="drivers.bme280:BME280",
    quantities={
        "temperature": Quantity("Cel", 0.01, (-40.0, 85.0)),
        # datasheet 0.008 %RH; judged in the SHT4x's 0.01 steps
        "humidity": Quantity("%RH", 0.01, (0.0, 100.0)),
        # datasheet 0.18 Pa (a BMP180-class part reports whole Pa); station pressure, 300-1100 hPa
        "pressure": Quantity("Pa", 0.2, (30_000.0, 110_000.0)),
    },
    sample="bme280.sample.toml",
    readme="../docs/sensors/bme280.md",
)

SHT4X = Manifest(
    name="sht4x",
    kind="driver",
    factory="drivers.sht4x:SHT4x",
    quantities={
        # The datasheet's range is -40..125 Cel; the ranges module has always judged every
        # temperature by -40..85 (the BME280's), and widening it changes its verdicts.
        "temperature": Quantity("Cel", 0.01, (-40.0, 85.0)),
        "humidity": Quantity("%RH", 0.01, (0.0, 100.0)),
    },
    sample="sht4x.sample.toml",
    readme="../docs/sensors/sht4x.md",
)

SCD4X = Manifest(
    name="scd4x",
    kind="driver",
    factory="drivers.scd4x:SCD4x",
    quantities={
        "co2": Quantity("ppm", 1.0, (0.0, 40_000.0)),
        # No resolution in the datasheet: raw steps of 175/65535 Cel and 100/65535 %RH, far below
        # the chip's repeatability (0.1 Cel, 0.4 %RH); judged in 0.01 steps like the others.
        "temperature": Quantity("Cel", 0.01, (-10.0, 60.0)),
        "humidity": Quantity("%RH", 0.01, (0.0, 100.0)),
    },
    sample="scd4x.sample.toml",
    readme="../docs/sensors/scd4x.md",
)

SDS011 = Manifest(
    name="sds011",
    kind="driver",
    factory="drivers.sds011:SDS011",
    quantities={
        "pm2_5": Quantity("ug/m3", 0.1, (0.0, 999.9)),
        "pm10": Quantity("ug/m3", 0.1, (0.0, 999.9)),
    },
    sample="sds011.sample.toml",
    readme="../docs/sensors/sds011.md",
)

_PMS = Quantity("ug/m3", 1.0, (0.0, 1000.0))  # whole ug/m3; effective range 0-500, at most 1000
# Not stated yet: the rules have judged these by their fallbacks, and stating them (whole
# numbers; 16-bit words) changes their verdicts on these series.
_PMS_CF1 = Quantity("ug/m3")
_PMS_COUNT = Quantity("count/dL")

PMS5003 = Manifest(
    name="pms5003",
    kind="driver",
    factory="drivers.pms5003:PMS5003",
    quantities={
        "pm1": _PMS,
        "pm2_5": _PMS,
        "pm10": _PMS,
        "pm1_cf1": _PMS_CF1,
        "pm2_5_cf1": _PMS_CF1,
        "pm10_cf1": _PMS_CF1,
        "n0_3": _PMS_COUNT,
        "n0_5": _PMS_COUNT,
        "n1_0": _PMS_COUNT,
        "n2_5": _PMS_COUNT,
        "n5_0": _PMS_COUNT,
        "n10": _PMS_COUNT,
    },
    sample="pms5003.sample.toml",
    readme="../docs/sensors/pms5003.md",
)

# A simulated sensor is no chip and states no chip facts: its readings are judged by those of
# the chips it imitates (BME280, PMS5003, SCD4x), which state them above.
SIMULATED = Manifest(
    name="simulated",
    kind="driver",
    factory="drivers.simulated:SimulatedSensor",
    quantities={
        "temperature": Quantity("Cel"),
        "humidity": Quantity("%RH"),
        "pressure": Quantity("Pa"),
        "pm1": Quantity("ug/m3"),
        "pm2_5": Quantity("ug/m3"),
        "pm10": Quantity("ug/m3"),
        "co2": Quantity("ppm"),
    },
    sample="simulated.sample.toml",
    readme="../docs/sensors/simulated.md",
)
