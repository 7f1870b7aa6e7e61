"""Is the `drivers` package on sys.path ours? Its name is generic: a distribution called
`drivers` installed into the same environment overwrites or shadows it, and the gateway would
then fail on a strange ImportError deep inside a plug-in load. The gateway lives in its own
virtual environment (scripts/install.sh makes one); this check says so when that was not done.
"""

from __future__ import annotations

import importlib

from gateway.core.errors import GatewayError

#: the top-level packages this distribution installs beside `gateway`, and the mark each carries
OURS = {"drivers": "depin-gateway"}


def check() -> None:
    """Raise GatewayError naming the foreign package when one stands in for ours."""
    for name, owner in OURS.items():
        try:
            package = importlib.import_module(name)
        except ImportError as e:
            raise GatewayError(
                f"the package {name!r} does not import ({e}): depin-gateway is installed "
                "incompletely; reinstall it into its own virtual environment "
                "(scripts/install.sh makes one)"
            ) from None
        if getattr(package, "OWNER", None) != owner:
            where = getattr(package, "__file__", None) or ", ".join(
                getattr(package, "__path__", []) or ["?"]
            )
            raise GatewayError(
                f"the package {name!r} at {where} is not depin-gateway's: another "
                f"distribution installs a package named {name!r} into this environment. "
                "Install depin-gateway into its own virtual environment (scripts/install.sh "
                "makes one), or remove the other distribution"
            )
