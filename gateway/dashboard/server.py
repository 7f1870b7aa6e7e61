"""The dashboard's HTTP side: a small asyncio server on the standard library alone.

Routes (GET and HEAD only; every response closes its connection):

- `/`: the page; `/static/app.js`, `/static/style.css`: its script and style, package data.
- `/api/devices`: every gateway's summary as JSON (no sparkline series).
- `/api/device/<device id>`: one gateway with its series and recent anomalies; 404 if unknown.
- `/events`: server-sent events. `snapshot` first (everything, series included), then
  `update` at most every `flush` seconds with the summaries of the gateways that changed and
  the sparkline points of the buckets that changed; a comment line keeps idle streams open.
  A client that falls behind is cut off; EventSource reconnects and starts from a snapshot.

The page holds no secret (the broker's credentials stay here) and changes nothing, but what the
gateways measure is still the owner's business: listening on loopback (the default), requests
must name a loopback Host, so a web page elsewhere cannot read the dashboard through DNS
rebinding. Put a reverse proxy with authentication in front to share it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from urllib.parse import unquote, urlsplit

from gateway.dashboard.model import DEVICE_ID, Fleet, dumps
from gateway.dashboard.subscriber import Broker, follow

log = logging.getLogger("gateway.dashboard")

STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
HEADER_LIMIT = 16 * 1024
REQUEST_TIMEOUT = 10.0
MAX_CLIENTS = 64  # event streams at once
CLIENT_QUEUE = 256  # updates waiting for one slow client before it is cut off
_REASONS = {
    200: "OK",
    400: "Bad Request",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    503: "Service Unavailable",
}
_LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT, [IPv6]:PORT or a bare PORT (on 127.0.0.1)."""
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", text
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT, e.g. 127.0.0.1:8080")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _static(name: str) -> bytes:
    return resources.files("gateway.dashboard").joinpath("static", name).read_bytes()


@dataclass(eq=False)
class _Client:
    queue: asyncio.Queue[str | None] = field(default_factory=lambda: asyncio.Queue(CLIENT_QUEUE))
    cut_off: bool = False

    def send(self, text: str) -> None:
        if self.cut_off:
            return
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:  # too slow: drop what waits and end the stream
            self.close()

    def close(self) -> None:
        """End the stream: drop what waits, then the end marker."""
        self.cut_off = True
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class Dashboard:
    """The HTTP server around one fleet model."""

    def __init__(
        self,
        fleet: Fleet,
        *,
        flush: float = 0.5,
        keepalive: float = 15.0,
        loopback_only_hosts: bool = True,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.fleet = fleet
        self.flush = flush
        self.keepalive = keepalive
        self.check_host = loopback_only_hosts
        self.max_clients = max_clients
        self.clients: set[_Client] = set()
        self.requests: set[asyncio.Task[None]] = set()
        self.files = {name: _static(name) for name in STATIC}

    # --- updates ------------------------------------------------------------------------------

    def broadcast(self, event: str, data: str) -> None:
        text = f"event: {event}\ndata: {data}\n\n"
        for c in list(self.clients):
            c.send(text)

    async def flusher(self) -> None:
        """Send what changed every `flush` seconds; prune old sparkline points now and then."""
        n = 0
        while True:
            await asyncio.sleep(self.flush)
            update = self.fleet.take_update()
            if update is not None and self.clients:
                self.broadcast("update", dumps(update))
            n += 1
            if n * self.flush >= 60:
                n = 0
                self.fleet.prune()

    # --- HTTP ---------------------------------------------------------------------------------

    async def close(self, timeout: float = 2.0) -> None:
        """End every event stream and let the requests finish (before the loop cancels them)."""
        for c in list(self.clients):
            c.close()
        pending = [t for t in self.requests if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=timeout)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.requests.add(task)
            task.add_done_callback(self.requests.discard)
        try:
            await self._handle(reader, writer)
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        except Exception:
            log.exception("request failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError:
            await self._send(writer, 400, b"request header too large\n")
            return
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            await self._send(writer, 400, b"bad request line\n")
            return
        method, target = parts[0], parts[1]
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        if method not in ("GET", "HEAD"):
            await self._send(writer, 405, b"GET only\n", extra={"Allow": "GET, HEAD"})
            return
        if self.check_host and not self._host_ok(headers.get("host", "")):
            await self._send(writer, 403, b"this dashboard answers to a loopback Host only\n")
            return
        head_only = method == "HEAD"
        path = unquote(urlsplit(target).path)
        if path in ("/", "/index.html"):
            await self._file(writer, "index.html", head_only)
        elif path.startswith("/static/") and path[8:] in STATIC and path[8:] != "index.html":
            await self._file(writer, path[8:], head_only)
        elif path == "/api/devices":
            await self._json(writer, dumps(self.fleet.snapshot(series=False)), head_only)
        elif path.startswith("/api/device/"):
            device_id = path[len("/api/device/") :]
            detail = self.fleet.detail(device_id) if DEVICE_ID.fullmatch(device_id) else None
            if detail is None:
                await self._send(writer, 404, b'{"error":"unknown device"}\n', "application/json")
            else:
                await self._json(writer, dumps(detail), head_only)
        elif path == "/events":
            await self._events(writer, head_only)
        else:
            await self._send(writer, 404, b"not found\n")

    @staticmethod
    def _host_ok(host: str) -> bool:
        host = host.strip().lower()
        name = host[1:].partition("]")[0] if host.startswith("[") else host.partition(":")[0]
        return name in _LOOPBACK_NAMES or name.endswith(".localhost") or is_loopback(name)

    async def _send(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        content_type: str = "text/plain; charset=utf-8",
        *,
        head_only: bool = False,
        extra: dict[str, str] | None = None,
    ) -> None:
        headers = {
            "Content-Type": content_type,
            "Content-Length": str(len(body)),
            "Cache-Control": "no-cache",
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
            "Content-Security-Policy": CSP,
            "Connection": "close",
            **(extra or {}),
        }
        text = f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        text += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        writer.write(text.encode("latin-1") + (b"" if head_only else body))
        await writer.drain()

    async def _file(self, writer: asyncio.StreamWriter, name: str, head_only: bool) -> None:
        await self._send(writer, 200, self.files[name], STATIC[name], head_only=head_only)

    async def _json(self, writer: asyncio.StreamWriter, text: str, head_only: bool) -> None:
        body = text.encode() + b"\n"
        await self._send(writer, 200, body, "application/json", head_only=head_only)

    async def _events(self, writer: asyncio.StreamWriter, head_only: bool) -> None:
        if len(self.clients) >= self.max_clients:
            await self._send(writer, 503, b"too many event streams\n", extra={"Retry-After": "5"})
            return
        writer.write(
            b"HTTP/1.1 200 OK\r\n"
            b"Content-Type: text/event-stream; charset=utf-8\r\n"
            b"Cache-Control: no-cache\r\n"
            b"X-Content-Type-Options: nosniff\r\n"
            b"X-Accel-Buffering: no\r\n"
            b"Connection: close\r\n\r\n"
        )
        if head_only:
            await writer.drain()
            return
        client = _Client()
        self.clients.add(client)
        try:
            snapshot = dumps(self.fleet.snapshot())
            writer.write(f"retry: 2000\n\nevent: snapshot\ndata: {snapshot}\n\n".encode())
            await writer.drain()
            while True:
                try:
                    async with asyncio.timeout(self.keepalive):
                        text = await client.queue.get()
                except TimeoutError:
                    text = ": keepalive\n\n"
                if text is None:
                    return
                writer.write(text.encode())
                await writer.drain()
        finally:
            self.clients.discard(client)


async def run(
    fleet: Fleet,
    broker: Broker,
    host: str,
    port: int,
    *,
    ready: Callable[[str], None] | None = None,
    flush: float = 0.5,
) -> None:
    """Serve until cancelled: the HTTP server, the MQTT subscriber and the update flusher."""
    dash = Dashboard(fleet, flush=flush, loopback_only_hosts=is_loopback(host))
    server = await asyncio.start_server(dash.handle, host, port, limit=HEADER_LIMIT)
    sock = server.sockets[0].getsockname()
    shown = f"[{sock[0]}]" if ":" in sock[0] else sock[0]
    url = f"http://{shown}:{sock[1]}/"
    log.info("dashboard on %s, following %s/+/… at %s", url, fleet.prefix, broker.label)
    if ready is not None:
        ready(url)
    try:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(follow(fleet, broker), name="mqtt")
            tg.create_task(dash.flusher(), name="flusher")
            await server.serve_forever()
    finally:
        # Event streams never end by themselves: end them first, or waiting for the server
        # to close would wait for them (and cancelling them trips asyncio on Python 3.11).
        server.close()
        await dash.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 2)
