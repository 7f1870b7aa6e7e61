"""Is the `drivers` package on sys.path ours? Its name is generic: a distribution called
`drivers` installed into the same environment overwrites or shadows it, and the gateway would
then fail on a strange ImportError deep inside a plug-in load. The gateway lives in its own
virtual environment (scripts/install.sh makes one); this check says so when that was not done.

The package is found, not imported: `depin-gateway status` runs this check too, and must not
pay for loading the drivers.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from gateway.core.errors import GatewayError

#: the top-level packages this distribution installs beside `gateway`, and the line that marks
#: each as ours (drivers/__init__.py)
OURS = {"drivers": 'OWNER = "depin-gateway"'}

FIX = (
    "Install depin-gateway into its own virtual environment (scripts/install.sh makes one), "
    "or remove the other distribution"
)


def check() -> None:
    """Raise GatewayError naming the foreign package when one stands in for ours."""
    for name, mark in OURS.items():
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError) as e:
            spec, problem = None, str(e)
        else:
            problem = "not found"
        if spec is None:
            raise GatewayError(
                f"the package {name!r} does not import ({problem}): depin-gateway is installed "
                f"incompletely. {FIX}"
            )
        origin = spec.origin
        where = origin or ", ".join(spec.submodule_search_locations or ["?"])
        try:
            ours = origin is not None and mark in Path(origin).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            ours = False
        if not ours:
            raise GatewayError(
                f"the package {name!r} at {where} is not depin-gateway's: another distribution "
                f"installs a package named {name!r} into this environment. {FIX}"
            )
