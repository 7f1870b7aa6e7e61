"""Sensor drivers: buses, one module per chip, and a simulated sensor.

Drivers register through the `depin_gateway.drivers` entry-point group, the built-in ones exactly
like a third party's.
"""
