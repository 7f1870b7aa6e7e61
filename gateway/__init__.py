"""depin-gateway: sensor readings judged, signed, spooled and delivered over MQTT."""

from gateway.core import moved

__version__ = "0.1.0"

moved.install()  # the modules' import paths of before the subpackages (gateway/core/moved.py)
