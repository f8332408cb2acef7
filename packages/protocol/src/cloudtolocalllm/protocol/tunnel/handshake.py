"""The one handshake discipline: the bridge (client) sends Hello first, the cloud (server) answers with a
Welcome, or with a GoAway when it is draining. Each side waits at most ``timeout_s`` for the other.

Both functions raise :class:`HandshakeFailed`, which says how to close the socket (or that it is gone).
"""

from __future__ import annotations

import asyncio

from cloudtolocalllm.protocol import (
    CloseCode,
    Connection,
    ConnectionProtocolError,
    GoAway,
    Hello,
    ProtocolError,
    Welcome,
)
from cloudtolocalllm.protocol.tunnel.transport import MessageTransport, TransportClosed

__all__ = ["HandshakeFailed", "accept_hello", "greet", "send_welcome"]


class HandshakeFailed(Exception):
    """The handshake did not complete."""

    def __init__(
        self, close_code: int | None, close_reason: str, reason: str = "", error: ProtocolError | None = None
    ) -> None:
        super().__init__(reason or close_reason or "the connection closed during the handshake")
        self.close_code = close_code
        """The WebSocket close code to send; None when the socket is already closed."""
        self.close_reason = close_reason
        self.reason = str(self)
        self.error = error
        """The protocol error behind the failure, if one was."""


async def _first_message(transport: MessageTransport, timeout_s: float, expected: str) -> bytes:
    try:
        async with asyncio.timeout(timeout_s):
            message = await transport.receive()
    except TimeoutError:
        reason = f"no {expected} within the handshake timeout ({timeout_s:g} s)"
        raise HandshakeFailed(
            CloseCode.PROTOCOL_VIOLATION, f"no {expected} within the handshake timeout", reason
        ) from None
    except TransportClosed:
        raise HandshakeFailed(None, "") from None
    if isinstance(message, str):
        error = ConnectionProtocolError(f"the first message must be a binary {expected} frame")
        raise HandshakeFailed(error.close_code, error.close_reason, error.reason, error)
    return message


def _failed(exc: ProtocolError) -> HandshakeFailed:
    if isinstance(exc, ConnectionProtocolError):
        return HandshakeFailed(exc.close_code, exc.close_reason, exc.reason, exc)
    return HandshakeFailed(CloseCode.PROTOCOL_VIOLATION, str(exc)[:120], exc.reason, exc)


async def accept_hello(transport: MessageTransport, conn: Connection, *, timeout_s: float) -> Hello:
    """Server role: receive the peer's Hello (the Connection refuses anything else, or another version)."""
    message = await _first_message(transport, timeout_s, "Hello")
    try:
        hello = conn.receive(message)
    except ProtocolError as exc:
        raise _failed(exc) from None
    assert isinstance(hello, Hello)  # the connection accepts nothing else first
    return hello


async def send_welcome(transport: MessageTransport, conn: Connection, welcome: Welcome) -> None:
    """Server role: complete the handshake; streams may open from now on."""
    try:
        await transport.send(conn.send(welcome))
    except TransportClosed:
        raise HandshakeFailed(None, "") from None


async def greet(transport: MessageTransport, conn: Connection, hello: Hello, *, timeout_s: float) -> Welcome | GoAway:
    """Client role: send ``hello`` and return the Welcome (or the GoAway of a draining server)."""
    try:
        await transport.send(conn.send(hello))
    except TransportClosed:
        raise HandshakeFailed(None, "") from None
    message = await _first_message(transport, timeout_s, "Welcome")
    try:
        frame = conn.receive(message)
    except ProtocolError as exc:
        raise _failed(exc) from None
    assert isinstance(frame, Welcome | GoAway)  # the connection accepts nothing else first
    return frame
