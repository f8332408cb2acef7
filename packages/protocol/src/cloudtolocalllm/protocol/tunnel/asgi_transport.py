"""The cloud's side: a Starlette (ASGI) WebSocket as a :class:`MessageTransport` (imports starlette)."""

from __future__ import annotations

from starlette.websockets import WebSocket, WebSocketDisconnect

from cloudtolocalllm.protocol.tunnel.transport import TransportClosed

__all__ = ["AsgiTransport"]


class AsgiTransport:
    __slots__ = ("_close_code", "_close_reason", "websocket")

    def __init__(self, websocket: WebSocket) -> None:
        self.websocket = websocket
        self._close_code: int | None = None
        self._close_reason = ""

    async def send(self, data: bytes) -> None:
        try:
            await self.websocket.send_bytes(data)
        except (WebSocketDisconnect, RuntimeError, OSError) as exc:
            raise TransportClosed("the WebSocket is closed") from exc

    async def receive(self) -> bytes | str:
        try:
            message = await self.websocket.receive()
        except (WebSocketDisconnect, RuntimeError) as exc:
            raise TransportClosed("the WebSocket is closed") from exc
        if message["type"] == "websocket.disconnect":
            if self._close_code is None:
                self._close_code = message.get("code")
                self._close_reason = message.get("reason") or ""
            raise TransportClosed("the peer closed the WebSocket")
        data = message.get("bytes")
        return data if data is not None else str(message.get("text") or "")

    async def close(self, code: int, reason: str) -> None:
        if self._close_code is None:
            self._close_code, self._close_reason = code, reason
        try:
            await self.websocket.close(code=code, reason=reason)
        except Exception:  # closing is best effort: the socket may already be gone any way at all
            return

    def abort(self) -> None:
        # ASGI offers no abort; closing without waiting is the nearest (uvicorn drops the transport).
        self._close_code = self._close_code or 1006

    @property
    def close_code(self) -> int | None:
        return self._close_code

    @property
    def close_reason(self) -> str:
        return self._close_reason
