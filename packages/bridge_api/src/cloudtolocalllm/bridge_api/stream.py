"""The cloud's end of one relayed HTTP exchange: request body out, response head and body back."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from cloudtolocalllm.core.protocol import Data, End, ErrorCode, ResponseHead

if TYPE_CHECKING:
    from cloudtolocalllm.bridge_api.session import BridgeSession

__all__ = ["RelayStream", "StreamFailed"]


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
        self._chunks: asyncio.Queue[bytes | StreamFailed | None] = asyncio.Queue()  # None: end of body
        self.finished = False

    # --- request body (cloud -> bridge) ---------------------------------------------------------------

    async def send_body_chunk(self, chunk: bytes) -> None:
        """Send ``chunk`` as Data frames, waiting for credit so a slow bridge bounds our memory."""
        conn = self.session.conn
        view = memoryview(chunk)
        while view:
            allowed = await conn.wait_for_credit(self.stream_id)
            piece, view = view[:allowed], view[allowed:]
            await self.session.send_frame(Data(self.stream_id, bytes(piece)))

    async def end_body(self) -> None:
        await self.session.send_frame(End(self.stream_id))

    # --- response (bridge -> cloud), fed by the session's reader ------------------------------------

    def on_head(self, frame: ResponseHead) -> None:
        if not self.head.done():
            self.head.set_result(frame)

    def on_data(self, payload: bytes) -> None:
        if payload:
            self._chunks.put_nowait(payload)

    def on_end(self) -> None:
        self._chunks.put_nowait(None)

    def fail(self, code: ErrorCode, message: str) -> None:
        failure = StreamFailed(code, message)
        if not self.head.done():
            self.head.set_exception(failure)
            self.head.exception()  # mark retrieved: the waiter may already be gone
        self._chunks.put_nowait(failure)

    async def next_chunk(self) -> bytes | None:
        """The next response body chunk, or None at the end; raises StreamFailed."""
        item = await self._chunks.get()
        if isinstance(item, StreamFailed):
            raise item
        if item is None:
            self.finished = True
        return item

    async def consumed(self, n: int) -> None:
        """The client took ``n`` bytes: return credit to the bridge when the protocol says so."""
        credit = self.session.conn.consumed(self.stream_id, n)
        if credit is not None:
            await self.session.send_encoded(credit)
