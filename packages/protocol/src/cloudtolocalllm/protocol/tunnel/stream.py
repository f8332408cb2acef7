"""One stream as the application sees it: its inbound body (turned into Credit as it is consumed) and
its outbound body (sent within the peer's credit)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Final

from cloudtolocalllm.protocol import Cancel, Data, End, ErrorCode, Frame, ResponseHead, StreamError

if TYPE_CHECKING:
    from cloudtolocalllm.protocol.tunnel.runtime import Tunnel

__all__ = ["COALESCE_BYTES", "StreamFailed", "TunnelStream"]

COALESCE_BYTES: Final = 256 * 1024
"""Chunks already waiting when the reader is ready are handed over together, up to this many bytes.
Nothing waits to be merged: a chunk that arrives alone is passed on alone, at once."""


class StreamFailed(Exception):
    """The stream ended abnormally: the peer reset it, the connection was lost, or this side failed it."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class TunnelStream:
    """Created by :meth:`Tunnel.open_stream` (cloud) or :meth:`Tunnel.accept_stream` (bridge)."""

    def __init__(self, tunnel: Tunnel, stream_id: int) -> None:
        self._tunnel = tunnel
        self.stream_id = stream_id
        self.head: asyncio.Future[ResponseHead] = asyncio.get_running_loop().create_future()
        """The bridge's ResponseHead (cloud side)."""
        # Unbounded on purpose: the protocol's credit window bounds what the peer may have in flight.
        self._chunks: deque[bytes | StreamFailed | None] = deque()  # None: end of body
        self._waiter: asyncio.Future[None] | None = None
        self.failure: StreamFailed | None = None
        self.bytes_in = 0
        self.bytes_out = 0

    # --- outbound -----------------------------------------------------------------------------------

    async def send(self, frame: Frame) -> None:
        """Send a frame of this stream behind its earlier ones (ResponseHead, End)."""
        await self._tunnel.send_stream_frame(frame, self.stream_id)

    async def send_body(self, chunk: bytes) -> None:
        """Send ``chunk`` as Data frames, each within the peer's credit and the frame size limit."""
        conn = self._tunnel.conn
        sid = self.stream_id
        allowed = await conn.wait_for_credit(sid)
        if len(chunk) <= allowed:  # the common case: one frame, no copy
            await self.send(Data(sid, chunk))
            self.bytes_out += len(chunk)
            return
        view = memoryview(chunk)
        while True:
            piece, view = view[:allowed], view[allowed:]
            await self.send(Data(sid, bytes(piece)))
            self.bytes_out += len(piece)
            if not view:
                return
            allowed = await conn.wait_for_credit(sid)

    async def end_body(self) -> None:
        await self.send(End(self.stream_id))

    def reset(self, frame: Cancel | StreamError) -> None:
        """Tell the peer this stream is over (if it still is open) and stop delivering to this side."""
        self._tunnel.reset_stream(self, frame)

    # --- inbound, fed by the tunnel's reader --------------------------------------------------------

    def _on_head(self, frame: ResponseHead) -> None:
        if not self.head.done():
            self.head.set_result(frame)

    def _on_data(self, payload: bytes) -> None:
        if payload:
            self._push(payload)

    def _on_end(self) -> None:
        self._push(None)

    def fail(self, code: ErrorCode, message: str) -> None:
        """End the inbound side with an error: the reader of the head or body sees StreamFailed."""
        if self.failure is not None:
            return
        failure = self.failure = StreamFailed(code, message)
        if not self.head.done():
            self.head.set_exception(failure)
            self.head.exception()  # mark retrieved: the waiter may already be gone
        self._push(failure)

    def _push(self, item: bytes | StreamFailed | None) -> None:
        self._chunks.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def has_chunk(self) -> bool:
        """read() would return (or raise) without waiting."""
        return bool(self._chunks)

    @property
    def ends_next(self) -> bool:
        """The End has arrived and nothing is before it: the next read() returns None without waiting."""
        chunks = self._chunks
        return bool(chunks) and chunks[0] is None

    async def read(self, coalesce: int = COALESCE_BYTES) -> bytes | None:
        """The next inbound body bytes, or None at the end; raises StreamFailed.

        Chunks already waiting are joined (up to ``coalesce`` bytes) so a reader that fell behind catches
        up with one write instead of many; nothing is held back to wait for more.
        """
        chunks = self._chunks
        while not chunks:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = chunks.popleft()
        if isinstance(item, StreamFailed):
            chunks.appendleft(item)  # every later read fails the same way
            raise item
        if item is None:
            return None
        if chunks and type(chunks[0]) is bytes and len(item) < coalesce:
            parts = [item]
            size = len(item)
            while chunks and size < coalesce and type(chunks[0]) is bytes:
                part = chunks.popleft()
                assert isinstance(part, bytes)
                parts.append(part)
                size += len(part)
            item = b"".join(parts)
        return item

    def consumed(self, n: int) -> None:
        """The application has taken ``n`` inbound bytes: return credit to the peer when the protocol says so."""
        self.bytes_in += n
        self._tunnel.consumed(self.stream_id, n)
