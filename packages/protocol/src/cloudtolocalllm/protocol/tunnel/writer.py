"""The one writer of a tunnel WebSocket: a control lane that never waits behind body bytes.

Frames are queued as the bytes ``Connection.send`` returned. Control frames (Ping, Pong, Credit, Open,
ResponseHead, Cancel, StreamError, BridgeStatus...) go out before body frames (Data, End): a Pong or a
Credit queued behind megabytes of upload would stall the peer. One rule keeps that correct: a frame of a
stream never overtakes an earlier frame of the same stream, so a control frame for a stream that still
has body bytes queued waits behind them (a Cancel after the End of a complete answer stays after it).

Body frames wait while more than ``high_water`` bytes are queued, so memory stays bounded however
slowly the peer reads. The writing task waits for more only while ``keep_alive()`` says traffic is
expected (streams are open); otherwise it ends once the lanes are empty and the next frame starts a new one,
so an idle connection (api-backend keeps one per connected bridge) holds no task.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

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
    ) -> None:
        """``on_lost``: called once when a write fails because the socket is gone; ``keep_alive``: whether
        the writing task should wait for more once the lanes are empty (default: never)."""
        self._transport = transport
        self._on_lost = on_lost
        self._keep_alive = keep_alive
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
                if self._control:
                    await self._transport.send(self._control.pop(0))
                elif self._body:
                    stream_id, data = self._body.popleft()
                    left = self._body_frames[stream_id] - 1
                    if left:
                        self._body_frames[stream_id] = left
                    else:
                        del self._body_frames[stream_id]
                    await self._transport.send(data)
                    self._queued -= len(data)
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
