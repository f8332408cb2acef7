"""What the tunnel runtime needs from a WebSocket: send one message, receive one, close, abort.

Both ends adapt their library to this (``websockets_transport`` for the bridge's client connection,
``asgi_transport`` for the cloud's Starlette WebSocket), so the runtime never imports either library.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["MessageTransport", "TransportClosed"]


class TransportClosed(Exception):
    """The WebSocket has closed (either side, or the network): nothing more can be sent or received."""


class MessageTransport(Protocol):
    """One WebSocket, message by message."""

    async def send(self, data: bytes) -> None:
        """Send one binary message; raises TransportClosed once the socket is gone."""

    async def receive(self) -> bytes | str:
        """The next message (str: a text message, which the protocol does not use); raises TransportClosed."""

    async def close(self, code: int, reason: str) -> None:
        """Close with a WebSocket close code; never raises."""

    def abort(self) -> None:
        """Drop the connection without a close handshake (a half-open TCP connection would only wait)."""

    @property
    def close_code(self) -> int | None:
        """The close code once closed (the peer's, or ours), else None."""

    @property
    def close_reason(self) -> str:
        """The close reason once closed, else ""."""
