"""Pieces of configuration the tests put together: the [device] table a sensor's snippet (a
driver's SAMPLE_CONFIG, what a probe prints) needs before it to load as a whole configuration,
and a [[module]] table to append to one."""

from __future__ import annotations

#: a [device] table, to put before a snippet of [[sensor]] tables
HEADER = """\
[device]
name = "probe-test"
key_file = "device.key"
"""

#: the spike module, appended to a configuration to change its module chain
SPIKES = '\n[[module]]\nid = "spikes"\nkind = "spikes"\n'
