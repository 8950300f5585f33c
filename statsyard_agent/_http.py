"""A small HTTP/1.1 server: h11 does the protocol, trio the sockets, a handler the rest.

The listening socket belongs to the supervisor's state, so a restarted server task keeps the same
bound port. One connection's failure (a bad request, a handler bug) never takes the server down.
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h11
import trio

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
IDLE_TIMEOUT = 30.0
_RECEIVE_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""

    def param(self, name: str, default: str | None = None) -> str | None:
        """The first value of a query-string (or form body) parameter."""
        values = self.query.get(name)
        return values[0] if values else default


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = field(default=())

    @classmethod
    def text(cls, status: int, text: str) -> Response:
        return cls(status, text.encode())


Handler = Callable[[Request], Awaitable[Response]]


async def serve_http(listener: trio.socket.SocketType, handler: Handler,
                     on_connection: Callable[[], None] = lambda: None) -> None:
    """Accept connections on ``listener`` forever, serving each in its own task.

    ``on_connection`` runs when a connection waits, before it is accepted (the fault injection
    point of the crash tests: the connection stays queued for the restarted server)."""
    async with trio.open_nursery() as nursery:
        while True:
            await trio.lowlevel.wait_readable(listener)
            on_connection()
            conn, _ = await listener.accept()
            nursery.start_soon(_serve_connection, trio.SocketStream(conn), handler)


async def _serve_connection(stream: trio.SocketStream, handler: Handler) -> None:
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEADER_BYTES)
    try:
        async with stream:
            while True:
                with trio.move_on_after(IDLE_TIMEOUT) as idle:
                    request = await _read_request(stream, conn)
                if idle.cancelled_caught or request is None:
                    return
                if isinstance(request, Response):
                    await _send(stream, conn, request)
                    return
                try:
                    response = await handler(request)
                except Exception:
                    log.exception("HTTP handler failed for %s %s", request.method, request.path)
                    response = Response.text(500, "internal error; see the agent log\n")
                await _send(stream, conn, response, head_only=request.method == "HEAD")
                if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                    return
                try:
                    conn.start_next_cycle()
                except h11.LocalProtocolError:
                    return
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        return


async def _read_request(stream: trio.SocketStream,
                        conn: h11.Connection) -> Request | Response | None:
    """Read one request; a Response means "answer this error and close"; None means EOF."""
    head: h11.Request | None = None
    body = bytearray()
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as exc:
            return Response.text(exc.error_status_hint, f"bad request: {exc}\n")
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_RECEIVE_CHUNK)
            conn.receive_data(data)
            if not data and conn.their_state is h11.IDLE:
                return None
            continue
        if isinstance(event, h11.Request):
            head = event
        elif isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY_BYTES:
                return Response.text(413, f"request body over {MAX_BODY_BYTES} bytes\n")
        elif isinstance(event, h11.EndOfMessage):
            assert head is not None
            return _to_request(head, bytes(body))
        elif isinstance(event, h11.ConnectionClosed):
            return None


def _to_request(head: h11.Request, body: bytes) -> Request:
    target = head.target.decode("latin-1")
    path, _, query_string = target.partition("?")
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in head.headers}
    query = urllib.parse.parse_qs(query_string, keep_blank_values=True)
    content_type = headers.get("content-type", "")
    if body and content_type.startswith("application/x-www-form-urlencoded"):
        for key, values in urllib.parse.parse_qs(body.decode("utf-8", "replace"),
                                                 keep_blank_values=True).items():
            query.setdefault(key, []).extend(values)
    return Request(head.method.decode("latin-1"), urllib.parse.unquote(path), query, headers,
                   body)


async def _send(stream: trio.SocketStream, conn: h11.Connection, response: Response,
                *, head_only: bool = False) -> None:
    """Send ``response``; for a HEAD request only its headers (h11 refuses a body there)."""
    headers = [
        ("Content-Type", response.content_type),
        ("Content-Length", str(len(response.body))),
        *response.headers,
    ]
    if conn.their_state is h11.ERROR or conn.their_state is h11.SEND_BODY:
        headers.append(("Connection", "close"))
    try:
        data = conn.send(h11.Response(status_code=response.status, headers=headers))
        if not head_only:
            data = (data or b"") + (conn.send(h11.Data(data=response.body)) or b"")
        data += conn.send(h11.EndOfMessage()) or b""
    except h11.LocalProtocolError:
        return
    await stream.send_all(data)
