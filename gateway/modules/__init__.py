"""Detection modules: each judges readings and returns a score in [0, 1] with flags.

Modules register through the `depin_gateway.modules` entry-point group; the built-in ones
exactly like a third party's: each entry point names the module's manifest, beside its class
(`MANIFEST`; `DROPOUT` and `WARMUP` in gaps.py), and its sample lies beside its code as
`<name>.sample.toml`.
"""
