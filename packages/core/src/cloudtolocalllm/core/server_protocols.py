"""uvicorn's HTTP protocol with a bounded request head, refused with JSON (the WebSocket protocol, with
refusals that log no error, is in ``websocket_protocol``).

- **Request heads.** httptools buffers a header line however long it is, and websockets' handshake parser
  drops a connection whose line exceeds 8 KiB, or that has more than 128 headers, without any status. The
  head (request line and headers) is checked here, before uvicorn starts the app or hands the connection to
  the WebSocket protocol, so every route (``/ws/`` ones included) answers ``431`` with an Ollama-shaped
  ``{"error": ...}``, and what a connection makes the server hold before that is bounded by the limit plus
  one read.
- **Write buffers.** A response's writes wait while the client's transport holds more than
  ``CLIENT_WRITE_HIGH_WATER`` (the event loops' default is 64 KiB): a client that reads slowly makes the
  server hold its stream's credit window and little more. On uvloop, which keeps a written object whole
  until its last byte is sent, large writes go out a piece at a time and a response's writes wait while
  any byte is unsent (``piecewise_transport``). A
  connection upgraded to a WebSocket gets the transport and the default buffer back: a bridge's tunnel
  carries uploads, which want the larger buffer.
- **Connection loss, without a task.** Each HTTP request's scope carries the extension ``CONNECTION_LOST``:
  ``{"future": ...}``, a future that completes when the client's connection closes. An endpoint that only
  needs to learn of a disconnect (api-backend, to cancel a generation) adds a callback to it, where asking
  ``receive()`` for ``http.disconnect`` takes a task per request (measured: 7-8 % of api-backend's CPU on
  one-chunk chats). :func:`connection_lost` reads it; other servers do not set it. As with ``receive()``, a
  loss is seen when the socket reports it: while uvicorn pauses reading (a pipelined request queued behind
  the running one), that is at the next write.
- **WebSocket refusals.** Refusing a handshake with a response (the ASGI ``websocket.http.response``
  extension, how a 401 reaches a bridge) leaves the sans-I/O protocol thinking the handshake never
  finished, so uvicorn logs "ASGI callable returned without completing handshake." at ERROR for every
  refusal: anyone could flood the error log without credentials (uvicorn pull request 3138 fixes it there).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final, cast

import httptools
import msgspec
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cloudtolocalllm.core.piecewise_transport import PiecewiseTransport, is_uvloop_transport
from cloudtolocalllm.core.serving import DEFAULT_MAX_HEADER_BYTES

__all__ = [
    "CLIENT_WRITE_HIGH_WATER",
    "CONNECTION_LOST",
    "DEFAULT_MAX_HEADER_BYTES",
    "MAX_HEADER_COUNT",
    "MAX_HEADER_LINE_BYTES",
    "bounded_http_protocol",
    "connection_lost",
    "head_problem",
]

CLIENT_WRITE_HIGH_WATER: Final = 16 * 1024
"""Bytes a client's transport may hold before a response's next write waits (resumes below a quarter)."""
CONNECTION_LOST: Final = "cloudtolocalllm.connection_lost"
"""The scope extension (``{"future": ...}``) whose future is done once the client's connection is closed."""
MAX_HEADER_LINE_BYTES: Final = 8192
"""One line with its CRLF: websockets' handshake parser refuses longer ones, nginx's default buffer too."""
MAX_HEADER_COUNT: Final = 100
"""Below websockets' 128, so an upgrade request is refused here, with a status, rather than dropped there."""

log = logging.getLogger("cloudtolocalllm.core.serving")


def head_problem(method: bytes, url: bytes, headers: Sequence[tuple[bytes, bytes]], limit: int) -> str | None:
    """Why a request head is refused (``None``: it is within the limits)."""
    request_line = len(method) + len(url) + len(b"  HTTP/1.1\r\n")
    lines = [len(name) + len(value) + 4 for name, value in headers]  # "name: value\r\n"
    if request_line > MAX_HEADER_LINE_BYTES or any(line > MAX_HEADER_LINE_BYTES for line in lines):
        return f"request header line too long (at most {MAX_HEADER_LINE_BYTES} bytes per line)"
    if len(headers) > MAX_HEADER_COUNT:
        return f"too many request headers (at most {MAX_HEADER_COUNT})"
    if request_line + sum(lines) + 2 > limit:
        return f"request headers too large (at most {limit} bytes in all)"
    return None


def connection_lost(scope: Mapping[str, Any]) -> asyncio.Future[None] | None:
    """The future done when this request's connection closes; ``None`` under a server that does not offer it."""
    info = (scope.get("extensions") or {}).get(CONNECTION_LOST)
    return None if info is None else info["future"]


def _refusal(message: str) -> bytes:
    body = msgspec.json.encode({"error": message}) + b"\n"
    head = (
        b"HTTP/1.1 431 Request Header Fields Too Large\r\n"
        b"content-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n"
        b"connection: close\r\n\r\n"
    )
    return head + body


class _HeadRefused(Exception):
    pass


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, refusing a request head over ``max_header_bytes`` with a JSON 431."""

    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_bytes = 0  # read since the current head began (an upper bound on its size)
        self._in_head = True
        self._problem: str | None = None
        self._lost: asyncio.Future[None] = self.loop.create_future()
        self._lost_extension: dict[object, object] = {"future": self._lost}  # one per connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if is_uvloop_transport(transport):
            super().connection_made(transport)
            self.transport = cast(asyncio.Transport, PiecewiseTransport(transport))
            return
        transport.set_write_buffer_limits(high=CLIENT_WRITE_HIGH_WATER)
        super().connection_made(transport)

    def resume_writing(self) -> None:
        transport = self.transport
        if isinstance(transport, PiecewiseTransport) and not transport.feed():
            return  # more kept than the socket took: the response's writer stays paused
        super().resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._lost.done():
            self._lost.set_result(None)
        super().connection_lost(exc)

    def handle_websocket_upgrade(self) -> None:
        transport = self.transport
        if isinstance(transport, PiecewiseTransport):
            self.transport = transport.unwrap()  # a tunnel carries uploads: whole writes, the default buffer
        self.transport.set_write_buffer_limits()  # the loop's default
        super().handle_websocket_upgrade()

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._problem = head_problem(self.parser.get_method(), self.url, self.headers, self.max_header_bytes)
        if self._problem is not None:
            raise _HeadRefused  # stops the parser: no app, no upgrade
        self.scope["extensions"] = {CONNECTION_LOST: self._lost_extension}
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._in_head, self._head_bytes = True, 0

    def data_received(self, data: bytes) -> None:
        if self._problem is not None:
            return
        if self._in_head:
            self._head_bytes += len(data)
        # As uvicorn's own, except that a refused head is answered with its JSON 431.
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        except httptools.HttpParserError:
            if self._problem is None:
                msg = "Invalid HTTP request received."
                self.logger.warning(msg)
                self.send_400_response(msg)
            else:
                self._refuse(self._problem)
            return
        if self._in_head and self._head_bytes > self.max_header_bytes:
            # Still no end of the head: refuse now rather than let httptools buffer a line without end.
            self._problem = f"request headers too large (at most {self.max_header_bytes} bytes in all)"
            self._refuse(self._problem)

    def _unsupported_upgrade_warning(self) -> None:
        # A service without WebSockets (no core[websockets]: a file server) answers an upgrade request as a
        # plain request. uvicorn would log two warnings for each: anyone could flood the log without limit.
        log.debug("upgrade request answered as a plain request (this service takes no WebSocket)")

    def _refuse(self, message: str) -> None:
        log.info("request refused: %s", message, extra={"status": 431})
        if not self.transport.is_closing():
            self.transport.write(_refusal(message))
            self.transport.close()


def bounded_http_protocol(max_header_bytes: int) -> type[BoundedHttpToolsProtocol]:
    """The protocol class for uvicorn's ``http=`` with this head limit."""
    return type("BoundedHttpToolsProtocol", (BoundedHttpToolsProtocol,), {"max_header_bytes": max_header_bytes})
