"""The old import path of `gateway.core.units`, kept for plug-ins written before the packages
were cut by what they hold: a third party's driver or module imports what it needs from here
and keeps working. New code imports `gateway.core.units`."""

from gateway.core.units import *  # noqa: F403
