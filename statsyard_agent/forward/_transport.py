"""The network side of the spooled sinks: one send per chunk, success only when confirmed.

A transport's ``send(payload)`` returns only once the receiver has confirmed the whole payload,
raises :class:`SendError` when retrying makes sense and :class:`RejectedError` when it does not.

* **Graphite** plaintext has no acknowledgement, so each chunk gets its own connection: write
  the lines, half-close (``shutdown(SHUT_WR)``), and wait for the receiver to close its side.
  Carbon, go-carbon, VictoriaMetrics and InfluxDB read to end-of-file and then close, so that
  close means "every line was read", where a completed ``send`` would only mean "in our kernel
  buffer". Any failure aborts the connection with a reset instead of a close, so the receiver
  does not take a cut-off last line for a complete one at end-of-file (it may still have read
  the lines before it: they are sent again, at least once).
* **Remote write** 1.0: ``POST`` of the snappy-compressed ``WriteRequest`` with the spec's
  headers; 2xx confirms; 5xx and 429 are retried (honouring ``Retry-After``), other 4xx are
  rejections, never retried (the spec's rule).
"""

from __future__ import annotations

import contextlib
import socket
import struct
from collections.abc import Sequence
from typing import Protocol

import cramjam
import h11
import trio

from statsyard_agent import __version__

from ._errors import RejectedError, SendError

_RECEIVE = 64 * 1024
_ERROR_BODY_BYTES = 512


class Transport(Protocol):
    description: str

    async def send(self, payload: bytes) -> None:
        """Deliver ``payload`` (whole spool records, concatenated) or raise a ForwardError."""


def _abort(stream: trio.SocketStream) -> None:
    """Close with a TCP reset (SO_LINGER 0) rather than a FIN."""
    with contextlib.suppress(OSError):
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return "timed out"
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        exc = cause.exceptions[0]  # trio's "all attempts to connect failed": say why
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


class GraphiteTransport:
    """Graphite plaintext over TCP, one connection per chunk, confirmed by the peer's close."""

    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.description = f"graphite {host}:{port}"

    async def send(self, payload: bytes) -> None:
        try:
            with trio.fail_after(self.timeout):
                stream = await trio.open_tcp_stream(self.host, self.port)
                confirmed = False
                try:
                    await stream.send_all(payload)
                    await stream.send_eof()
                    while await stream.receive_some(_RECEIVE):
                        pass  # a Graphite receiver sends nothing; read until it closes
                    confirmed = True
                finally:
                    if not confirmed:
                        _abort(stream)
                    stream.socket.close()
        except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
            raise SendError(f"{self.description}: {_describe(exc)}") from exc


class RemoteWriteTransport:
    """Prometheus remote write 1.0 over HTTP/1.1 (h11), one request per chunk."""

    def __init__(
        self, host: str, port: int, path: str, timeout: float, headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        self.host = host
        self.port = port
        self.path = path
        self.timeout = timeout
        self.extra_headers = tuple(headers)
        authority = f"[{host}]" if ":" in host else host
        self.host_header = authority if port == 80 else f"{authority}:{port}"
        self.description = f"remote write http://{self.host_header}{path}"

    def request_headers(self, length: int) -> list[tuple[str, str]]:
        """The spec's headers, then the configured extra ones (e.g. X-Scope-OrgID)."""
        return [
            ("Host", self.host_header),
            ("User-Agent", f"statsyard-agent/{__version__}"),
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
            ("Content-Length", str(length)),
            *self.extra_headers,
        ]

    async def send(self, payload: bytes) -> None:
        body = bytes(cramjam.snappy.compress_raw(payload))
        try:
            with trio.fail_after(self.timeout):
                status, headers, text = await self._post(body)
        except (OSError, trio.BrokenResourceError, trio.TooSlowError, h11.ProtocolError) as exc:
            raise SendError(f"{self.description}: {_describe(exc)}") from exc
        if 200 <= status < 300:
            return
        message = f"{self.description}: HTTP {status}: {text.strip()[:200]}"
        if status == 429 or status >= 500:
            raise SendError(message, retry_after=_retry_after(headers.get("retry-after")))
        raise RejectedError(message)

    async def _post(self, body: bytes) -> tuple[int, dict[str, str], str]:
        stream = await trio.open_tcp_stream(self.host, self.port)
        try:
            conn = h11.Connection(h11.CLIENT)
            data = conn.send(
                h11.Request(method="POST", target=self.path, headers=self.request_headers(len(body)))
            )
            data += conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage())
            await stream.send_all(data)
            status = 0
            headers: dict[str, str] = {}
            text = bytearray()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await stream.receive_some(_RECEIVE))
                elif isinstance(event, h11.Response):
                    status = event.status_code
                    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in event.headers}
                elif isinstance(event, h11.Data):
                    text += event.data[: max(0, _ERROR_BODY_BYTES - len(text))]
                elif isinstance(event, h11.EndOfMessage):
                    return status, headers, text.decode("utf-8", "replace")
                elif isinstance(event, h11.ConnectionClosed):
                    raise trio.BrokenResourceError("connection closed before a response")
        finally:
            stream.socket.close()


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds (the delay-seconds form; an HTTP date is ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
