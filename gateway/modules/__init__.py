"""Detection modules: each judges readings and returns a score in [0, 1] with flags.

Modules register through the `depin_gateway.modules` entry-point group; the built-in ones
exactly like a third party's.
"""
