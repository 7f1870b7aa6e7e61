"""The one MQTT layer: every client of the gateway, the verifier, the demo, the dashboard and
the attestor connects through it.

- `url`: the broker-URL parser (light: `status` uses it without any MQTT client or ssl)
- `backoff`: the jittered exponential backoff between attempts
- `tls`: the TLS context of every client
- `connect`: the client recipe, and MQTT 5 with the fallback to 3.1.1
- `subscribe`: follow a broker (connect, subscribe, deliver, reconnect) until cancelled

It imports only gateway.core and third-party libraries; this file imports nothing, so the URL
parser comes without aiomqtt or paho. The attestor keeps its own paho client (manual acks) and
takes the URL, TLS and backoff from here.
"""
