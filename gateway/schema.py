"""The old import path of `gateway.core.fields`, kept for plug-ins written before the packages
were cut by what they hold: a third party's driver or module imports what it needs from here
and keeps working. New code imports `gateway.core.fields`."""

from gateway.core.fields import *  # noqa: F403
