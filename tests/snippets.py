"""What a sensor's configuration snippet (a driver's SAMPLE_CONFIG, what a probe prints) needs
before it to load as a whole configuration."""

from __future__ import annotations

#: a [device] table, to put before a snippet of [[sensor]] tables
HEADER = """\
[device]
name = "probe-test"
key_file = "device.key"
"""
