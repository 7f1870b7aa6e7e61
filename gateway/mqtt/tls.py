"""The one TLS setup of every MQTT client here (the uplink, live verify, the demo, the
dashboard, and the attestor's paho client): the system's trust store, or the CA file given,
with the broker's host name checked; a client certificate when one is configured."""

from __future__ import annotations

import ssl
from pathlib import Path


def context(
    ca_file: Path | str | None = None,
    cert_file: Path | str | None = None,
    key_file: Path | str | None = None,
) -> ssl.SSLContext:
    """A client context. Made for each connection, it takes up renewed files at the next."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if cert_file:  # without a key file, the certificate file holds the key too (one PEM)
        ctx.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return ctx
