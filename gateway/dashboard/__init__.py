"""The fleet dashboard: `depin-gateway dashboard --broker URL`.

An ordinary MQTT client (the broker's credentials stay on this server) keeps a model of every
gateway it hears about (`model`), and a small asyncio HTTP server (`server`, standard library
only) serves one page that follows the model live over server-sent events. The page is plain
HTML, CSS and JavaScript in `static/`, served from the package: no build step, no front-end
dependency.
"""

from __future__ import annotations
