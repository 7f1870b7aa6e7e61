"""A plain MQTT client on the test broker, for what a test publishes as anyone on it."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion


@contextlib.contextmanager
def publisher(port: int, client_id: str = "") -> Iterator[mqtt.Client]:
    pub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id)
    pub.connect("127.0.0.1", port)
    pub.loop_start()
    try:
        yield pub
    finally:
        pub.loop_stop()
        pub.disconnect()
