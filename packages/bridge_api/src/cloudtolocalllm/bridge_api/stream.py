"""The cloud's end of one relayed HTTP exchange: request body out, response head and body back."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Final

from cloudtolocalllm.core.protocol import Data, End, ErrorCode, ResponseHead

if TYPE_CHECKING:
    from cloudtolocalllm.bridge_api.session import BridgeSession

__all__ = ["COALESCE_BYTES", "RelayStream", "StreamFailed"]

COALESCE_BYTES: Final = 256 * 1024
"""Chunks already waiting when the client is ready are handed over together, up to this many bytes.
Nothing waits to be merged: a chunk that arrives alone is passed on alone, at once."""


class StreamFailed(Exception):
    """The stream ended abnormally: the bridge reported an error, was lost, or the peer cancelled."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class RelayStream:
    def __init__(self, session: BridgeSession, stream_id: int) -> None:
        self.session = session
        self.stream_id = stream_id
        self.head: asyncio.Future[ResponseHead] = asyncio.get_running_loop().create_future()
        # Unbounded on purpose: the protocol's credit window bounds what the bridge may have in flight.
        self._chunks: deque[bytes | StreamFailed | None] = deque()  # None: end of body
        self._waiter: asyncio.Future[None] | None = None
        self.finished = False

    # --- request body (cloud -> bridge) ---------------------------------------------------------------

    async def send_body_chunk(self, chunk: bytes) -> None:
        """Send ``chunk`` as Data frames, waiting for credit so a slow bridge bounds our memory."""
        conn = self.session.conn
        allowed = await conn.wait_for_credit(self.stream_id)
        if len(chunk) <= allowed:  # the common case: one frame, no copy
            await self.session.send_frame(Data(self.stream_id, chunk))
            return
        view = memoryview(chunk)
        while True:
            piece, view = view[:allowed], view[allowed:]
            await self.session.send_frame(Data(self.stream_id, bytes(piece)))
            if not view:
                return
            allowed = await conn.wait_for_credit(self.stream_id)

    async def end_body(self) -> None:
        await self.session.send_frame(End(self.stream_id))

    # --- response (bridge -> cloud), fed by the session's reader ------------------------------------

    def on_head(self, frame: ResponseHead) -> None:
        if not self.head.done():
            self.head.set_result(frame)

    def on_data(self, payload: bytes) -> None:
        if payload:
            self._push(payload)

    def on_end(self) -> None:
        self._push(None)

    def fail(self, code: ErrorCode, message: str) -> None:
        failure = StreamFailed(code, message)
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
        """next_chunk() would return (or raise) without waiting."""
        return bool(self._chunks)

    async def next_chunk(self) -> bytes | None:
        """The next response body bytes, or None at the end; raises StreamFailed.

        Chunks that are already waiting are joined (up to COALESCE_BYTES) so a client that fell behind
        catches up with one write instead of many; nothing is held back to wait for more.
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
            raise item
        if item is None:
            self.finished = True
            return None
        if chunks and type(chunks[0]) is bytes:
            parts = [item]
            size = len(item)
            while chunks and size < COALESCE_BYTES and type(chunks[0]) is bytes:
                part = chunks.popleft()
                assert isinstance(part, bytes)
                parts.append(part)
                size += len(part)
            item = b"".join(parts)
        return item

    async def consumed(self, n: int) -> None:
        """The client took ``n`` bytes: return credit to the bridge when the protocol says so."""
        credit = self.session.conn.consumed(self.stream_id, n)
        if credit is not None:
            await self.session.send_frame(credit)
