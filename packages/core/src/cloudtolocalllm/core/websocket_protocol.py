"""The WebSocket protocol ``serve()`` runs (``core[websockets]``): uvicorn's sans-I/O one, whose reads pause
only when the app falls behind and whose refusals log no error.

- **Reads.** uvicorn pauses reading after every message until the app takes it, and resumes in
  ``receive()``: two ``epoll_ctl`` calls for each message (``strace`` counted four for each request a bridge
  answered).
  Here reading pauses only when a message arrives while another is still queued. An app that keeps up
  costs none; one that does not holds one message more than under uvicorn's rule (which holds the
  messages of one read).
- **Refusals.** Refusing a handshake with a response (the ASGI ``websocket.http.response`` extension, how a
  401 reaches a bridge) leaves the sans-I/O protocol thinking the handshake never finished, so uvicorn logs
  "ASGI callable returned without completing handshake." at ERROR for every refusal: anyone could flood the
  error log without credentials (uvicorn pull request 3138 fixes it there).
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

__all__ = ["ServingWebSocketProtocol"]


class ServingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol: reads pause only behind a queued message; a refusal by response
    ends the handshake (no ERROR)."""

    def send_receive_event_to_app(self) -> None:
        if self.read_paused or not self.queue.empty():
            super().send_receive_event_to_app()  # the app is behind: queue it and pause, as uvicorn does
            return
        self.read_paused = True  # uvicorn's own method pauses unless it believes reading is paused already
        try:
            super().send_receive_event_to_app()
        finally:
            self.read_paused = False

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.http.response.body" and not message.get("more_body", False):
            self.handshake_complete = True  # the refusal is on the wire: the handshake is over, not missing
