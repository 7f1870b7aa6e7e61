"""The old import path of `gateway.core.reading`, kept for plug-ins written before the packages
were cut by what they hold: a third party's driver or module imports what it needs from here
and keeps working. New code imports `gateway.core.reading`."""

from gateway.core.reading import *  # noqa: F403
