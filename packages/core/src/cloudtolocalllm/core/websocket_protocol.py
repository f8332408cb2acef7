"""uvicorn's sans-I/O WebSocket protocol, whose refusals log no error (``core[websockets]``).

Refusing a handshake with a response (the ASGI ``websocket.http.response`` extension, how a 401 reaches a
bridge) leaves the sans-I/O protocol thinking the handshake never finished, so uvicorn logs "ASGI callable
returned without completing handshake." at ERROR for every refusal: anyone could flood the error log without
credentials (uvicorn pull request 3138 fixes it there).
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

__all__ = ["QuietRefusalWebSocketProtocol"]


class QuietRefusalWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, whose refusals by response end the handshake (no ERROR)."""

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
            self.handshake_complete = True  # the refusal is on the wire: the handshake is over, not missing
