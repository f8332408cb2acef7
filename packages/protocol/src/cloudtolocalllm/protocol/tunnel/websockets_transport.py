"""The bridge's side: a ``websockets`` connection as a :class:`MessageTransport` (imports websockets)."""

from __future__ import annotations

from websockets.asyncio.connection import Connection as WebSocketConnection
from websockets.exceptions import ConnectionClosed

from cloudtolocalllm.protocol.tunnel.transport import TransportClosed

__all__ = ["WebsocketsTransport"]


class WebsocketsTransport:
    __slots__ = ("ws",)

    def __init__(self, ws: WebSocketConnection) -> None:
        self.ws = ws

    async def send(self, data: bytes) -> None:
        try:
            await self.ws.send(data)
        except ConnectionClosed:
            raise TransportClosed("the WebSocket is closed") from None

    async def receive(self) -> bytes | str:
        try:
            return await self.ws.recv()
        except ConnectionClosed:
            raise TransportClosed("the WebSocket is closed") from None

    async def close(self, code: int, reason: str) -> None:
        try:
            await self.ws.close(code, reason)
        except Exception:  # closing is best effort: the socket may already be gone any way at all
            return

    def abort(self) -> None:
        self.ws.transport.abort()

    @property
    def close_code(self) -> int | None:
        return self.ws.close_code

    @property
    def close_reason(self) -> str:
        return self.ws.close_reason or ""
