"""Sensor drivers: buses, one module per chip, and a simulated sensor.

Drivers register through the `depin_gateway.drivers` entry-point group, the built-in ones exactly
like a third party's: each entry point names the driver's manifest (the built-in ones are in
`manifests.py`), and each driver's sample lies beside its code as `<name>.sample.toml`.
"""

#: Who this package belongs to. `drivers` is a generic name: another distribution installing a
#: package of that name into the same environment would overwrite ours, and the gateway checks
#: this mark at start (gateway/core/own_packages.py) to say so instead of failing on an import.
OWNER = "depin-gateway"
