"""One MQTT layer for every client of the broker (the gateway's uplink, live `verify`, the demo,
the dashboard, the attestor): the broker URL, connecting with the MQTT 5 -> 3.1.1 fallback,
backoff, and a subscription kept alive. Imports only gateway.core."""
