"""The one writer of a tunnel WebSocket: a control lane that never waits behind body bytes.

Frames are queued as the bytes ``Connection.send`` returned. Control frames (Ping, Pong, Credit, Open,
ResponseHead, Cancel, StreamError, BridgeStatus...) go out before body frames (Data, End): a Pong or a
Credit queued behind megabytes of upload would stall the peer. One rule keeps that correct: a frame of a
stream never overtakes an earlier frame of the same stream, so a control frame for a stream that still
has body bytes queued waits behind them (a Cancel after the End of a complete answer stays after it).

With ``batch_bytes`` set (the peer turned the ``batch`` feature on), what is queued when the task writes
goes out as one message, in the same order, up to that many bytes: a short answer's ResponseHead, Data and
End, or a chunk of each of many streams, cost one WebSocket message instead of one each.

Body frames wait while more than ``high_water`` bytes are queued, so memory stays bounded however
slowly the peer reads. The writing task waits for more only while ``keep_alive()`` says traffic is
expected (streams are open); otherwise it ends once the lanes are empty and the next frame starts a new one,
so an idle connection (api-backend keeps one per connected bridge) holds no task.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from cloudtolocalllm.protocol.codec import BATCH_OVERHEAD, encode_batch
from cloudtolocalllm.protocol.tunnel.transport import MessageTransport, TransportClosed

__all__ = ["DEFAULT_HIGH_WATER", "Writer"]

DEFAULT_HIGH_WATER = 1024 * 1024
"""Queued body bytes above which senders of body frames wait (control frames never wait)."""


class Writer:
    """Queues encoded frames in two lanes and writes them to ``transport`` from one task.

    An idle connection holds only empty lists and counters here (the api-backend keeps one per connected
    bridge): the body lane and the event senders wait on are created when first needed.
    """

    __slots__ = (
        "_batch_bytes",
        "_body",
        "_body_frames",
        "_control",
        "_drained",
        "_high_water",
        "_keep_alive",
        "_on_lost",
        "_queued",
        "_space",
        "_task",
        "_transport",
        "_waiting",
        "_wakeup",
        "closed",
    )

    def __init__(
        self,
        transport: MessageTransport,
        *,
        high_water: int = DEFAULT_HIGH_WATER,
        on_lost: Callable[[], None] | None = None,
        keep_alive: Callable[[], bool] | None = None,
        batch_bytes: int = 0,
    ) -> None:
        """``on_lost``: called once when a write fails because the socket is gone; ``keep_alive``: whether
        the writing task should wait for more once the lanes are empty (default: never)."""
        self._transport = transport
        self._on_lost = on_lost
        self._keep_alive = keep_alive
        self._batch_bytes = batch_bytes - BATCH_OVERHEAD  # 0 or less: one frame per message
        self._control: list[bytes] = []  # a few frames at a time: a list is smaller than a deque
        self._body: deque[tuple[int, bytes]] | None = None
        self._body_frames: dict[int, int] = {}  # stream id -> its frames queued in the body lane
        self._queued = 0
        self._high_water = high_water
        self._space: asyncio.Event | None = None  # set while there is room in the body lane
        self._wakeup: asyncio.Event | None = None  # created the first time the task waits for more
        self._waiting = False  # the task waits with nothing to write
        self._drained: asyncio.Event | None = None  # set once nothing is queued (see flush())
        self._task: asyncio.Task[None] | None = None
        self.closed = False

    def put_control(self, data: bytes, stream_id: int = 0) -> None:
        """Queue a frame that never waits (dropped once the writer is closed)."""
        if self.closed:
            return
        if stream_id and stream_id in self._body_frames:
            self._queue_body(stream_id, data)  # keep the stream's own order
        else:
            self._control.append(data)
        self._kick()

    async def wait_for_room(self) -> None:
        """Return once the body lane is below the high-water mark; raises TransportClosed."""
        while self._queued >= self._high_water and not self.closed:
            if self._space is None:
                self._space = asyncio.Event()
            self._space.clear()
            await self._space.wait()
        if self.closed:
            raise TransportClosed("the connection is closed")

    def put_body(self, data: bytes, stream_id: int) -> None:
        """Queue a body frame (after :meth:`wait_for_room`: nothing may await between the two)."""
        if self.closed:
            raise TransportClosed("the connection is closed")
        self._queue_body(stream_id, data)
        self._kick()

    def _queue_body(self, stream_id: int, data: bytes) -> None:
        if self._body is None:
            self._body = deque()
        self._body.append((stream_id, data))
        self._body_frames[stream_id] = self._body_frames.get(stream_id, 0) + 1
        self._queued += len(data)

    def _kick(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="tunnel-writer")
        elif self._waiting:
            assert self._wakeup is not None
            self._wakeup.set()

    async def _run(self) -> None:
        try:
            while True:
                if self._control or self._body:
                    frames, body_bytes = self._take()
                    await self._transport.send(frames[0] if len(frames) == 1 else encode_batch(frames))
                    if body_bytes:
                        self._queued -= body_bytes
                        if self._space is not None and self._queued < self._high_water:
                            self._space.set()
                else:
                    if self._drained is not None:
                        self._drained.set()
                    if not await self._wait_for_more():
                        return
        except TransportClosed:
            self.close()
            if self._on_lost is not None:
                self._on_lost()
        finally:
            self._task = None

    def _take(self) -> tuple[list[bytes], int]:
        """The next message's frames (control lane first, then the body lane, in order) and how many body
        bytes they hold: one frame, or as many as fit ``batch_bytes`` when batching."""
        limit = self._batch_bytes
        control = self._control
        frames: list[bytes] = []
        size = 0
        while control and (not frames or size + len(control[0]) <= limit):
            data = control.pop(0)
            frames.append(data)
            size += len(data)
            if limit <= 0:
                return frames, 0
        body = self._body
        body_bytes = 0
        while body and (not frames or size + len(body[0][1]) <= limit):
            stream_id, data = body.popleft()
            left = self._body_frames[stream_id] - 1
            if left:
                self._body_frames[stream_id] = left
            else:
                del self._body_frames[stream_id]
            frames.append(data)
            size += len(data)
            body_bytes += len(data)
            if limit <= 0:
                break
        return frames, body_bytes

    async def _wait_for_more(self) -> bool:
        """Wait for the next frame while traffic is expected; False to let the task end."""
        if self._keep_alive is None or not self._keep_alive():
            return False
        if self._wakeup is None:
            self._wakeup = asyncio.Event()
        self._wakeup.clear()
        self._waiting = True
        try:
            await self._wakeup.wait()
        finally:
            self._waiting = False
        return True

    async def flush(self, timeout_s: float) -> None:
        """Wait (at most ``timeout_s``) until everything queued has been written, e.g. a GoAway before a close."""
        if self.closed or self._task is None:
            return
        self._drained = drained = asyncio.Event()
        try:
            async with asyncio.timeout(timeout_s):
                while self._task is not None and not self.closed and not self._waiting:
                    drained.clear()
                    await drained.wait()
        except TimeoutError:
            return
        finally:
            self._drained = None

    def close(self) -> None:
        """Drop what is queued and wake every waiting sender (they see TransportClosed)."""
        self.closed = True
        self._control.clear()
        self._body = None
        self._body_frames.clear()
        self._queued = 0
        if self._space is not None:
            self._space.set()
        if self._drained is not None:
            self._drained.set()
        if self._waiting:
            assert self._wakeup is not None
            self._wakeup.set()  # the task sees the lanes empty and ends

    async def aclose(self) -> None:
        """Close and wait for the writing task to end."""
        self.close()
        task = self._task
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
