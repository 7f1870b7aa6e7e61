"""depin-gateway: sensor readings judged, signed, spooled and delivered over MQTT."""

__version__ = "0.1.0"
