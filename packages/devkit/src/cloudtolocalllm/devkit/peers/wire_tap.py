"""A :class:`~cloudtolocalllm.protocol.tunnel.MessageTransport` around another one, for fake peers: it shows a
test each frame that arrives and can keep chosen frames from leaving, without touching the runtime.

The tunnel runtime answers Pings and takes Pongs itself, so a test that asserts the peer under test pinged
(or answered a Ping) reads them here; a peer that stops answering Pings drops its Pongs here.
"""

from __future__ import annotations

from collections.abc import Callable

from cloudtolocalllm.protocol import Frame, ProtocolError, decode
from cloudtolocalllm.protocol.frames import MAX_FRAME_BYTES_LIMIT
from cloudtolocalllm.protocol.tunnel import MessageTransport

__all__ = ["WireTap"]


def _frame_of(message: bytes) -> Frame | None:
    try:
        return decode(message, max_frame_bytes=MAX_FRAME_BYTES_LIMIT)
    except ProtocolError:
        return None  # not a frame: the Connection behind the tap refuses it


class WireTap:
    """Passes every message through; ``on_received`` sees each frame that arrives (before the Connection
    checks it), ``drop_sent`` says which outgoing frames never reach the wire."""

    __slots__ = ("_drop_sent", "_inner", "_on_received")

    def __init__(
        self,
        inner: MessageTransport,
        *,
        on_received: Callable[[Frame], None] | None = None,
        drop_sent: Callable[[Frame], bool] | None = None,
    ) -> None:
        self._inner = inner
        self._on_received = on_received
        self._drop_sent = drop_sent

    async def send(self, data: bytes) -> None:
        if self._drop_sent is not None and (frame := _frame_of(data)) is not None and self._drop_sent(frame):
            return
        await self._inner.send(data)

    async def receive(self) -> bytes | str:
        message = await self._inner.receive()
        if self._on_received is not None and isinstance(message, bytes):
            frame = _frame_of(message)
            if frame is not None:
                self._on_received(frame)
        return message

    async def close(self, code: int, reason: str) -> None:
        await self._inner.close(code, reason)

    def abort(self) -> None:
        self._inner.abort()

    @property
    def close_code(self) -> int | None:
        return self._inner.close_code

    @property
    def close_reason(self) -> str:
        return self._inner.close_reason
