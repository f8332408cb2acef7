"""A scriptable bridge for api-backend tests: speaks the real protocol over a real WebSocket.

Each Open is answered by ``handler(open, body) -> Reply``; a Reply is a status, headers and an async
iterator of body chunks, so tests control timing chunk by chunk. The real bridge client has its own tests;
end-to-end tests use it with a real model.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import websockets

from cloudtolocalllm.protocol import (
    PROTOCOL_VERSION,
    BackendKind,
    BridgeStatus,
    Cancel,
    Connection,
    Data,
    End,
    Hello,
    Open,
    Ping,
    Pong,
    Reauth,
    ReauthOk,
    ResponseHead,
    Role,
    StreamClosedError,
    StreamError,
    Welcome,
    encode,
)


@dataclass
class Reply:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=lambda: [("content-type", "application/json")])
    chunks: AsyncIterator[bytes] | None = None


async def chunks_of(*parts: bytes, delay: float = 0.0) -> AsyncIterator[bytes]:
    for part in parts:
        if delay:
            await asyncio.sleep(delay)
        yield part


Handler = Callable[[Open, bytes], Awaitable[Reply | StreamError]]


async def echo_handler(open_frame: Open, body: bytes) -> Reply:
    return Reply(chunks=chunks_of(b'{"path":"' + open_frame.path.encode() + b'"}'))


class FakeBridge:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        bridge_id: str = "bridge-1",
        models: list[str] | None = None,
        handler: Handler = echo_handler,
        answer_pings: bool = True,
        version: int = PROTOCOL_VERSION,
    ) -> None:
        self.url = base_url.replace("http://", "ws://") + "/ws/bridge"
        self.token = token
        self.bridge_id = bridge_id
        self.models = ["smollm2:135m"] if models is None else models
        self.handler = handler
        self.answer_pings = answer_pings
        self.version = version
        self.conn = Connection(Role.BRIDGE)
        self.opens: list[Open] = []
        self.cancelled: dict[int, float] = {}  # stream id -> monotonic time the Cancel arrived
        self.welcome: Welcome | None = None
        self.reauth_ok: list[ReauthOk] = []
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.max_unconsumed = 0
        self._ws: websockets.ClientConnection | None = None
        self._bodies: dict[int, asyncio.Queue[bytes | None]] = {}
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.closed = asyncio.Event()

    async def __aenter__(self) -> FakeBridge:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    async def connect(self) -> None:
        self._ws = await websockets.connect(
            self.url, additional_headers={"Authorization": f"Bearer {self.token}"}, max_size=None
        )
        hello = Hello(
            self.version,
            self.bridge_id,
            "test bridge",
            "0.0.1",
            "linux",
            BackendKind.OLLAMA,
            True,
            list(self.models),
        )
        if self.version == PROTOCOL_VERSION:
            await self._ws.send(self.conn.send(hello))
        else:
            await self._ws.send(encode(hello))
        try:
            first = await self._ws.recv()
        except websockets.ConnectionClosed as closed:
            self._record_close(closed)
            self.closed.set()
            return
        assert isinstance(first, bytes)
        welcome = self.conn.receive(first)
        assert isinstance(welcome, Welcome)
        self.welcome = welcome
        self._reader = asyncio.create_task(self._read())

    def _record_close(self, closed: websockets.ConnectionClosed) -> None:
        if closed.rcvd is not None:
            self.close_code, self.close_reason = closed.rcvd.code, closed.rcvd.reason

    async def disconnect(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def kill(self) -> None:
        """Drop the TCP connection without a close handshake (a crash or a pulled cable)."""
        assert self._ws is not None
        self._ws.transport.abort()
        await asyncio.sleep(0)

    async def send(self, frame: object) -> None:
        assert self._ws is not None
        async with self._lock:
            await self._ws.send(self.conn.send(frame))  # type: ignore[arg-type]

    async def send_raw(self, data: bytes) -> None:
        assert self._ws is not None
        await self._ws.send(data)

    async def reauth(self, token: str) -> None:
        await self.send(Reauth(token))

    async def report(self, *, reachable: bool, models: list[str]) -> None:
        await self.send(BridgeStatus(reachable, models))

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for message in self._ws:
                assert isinstance(message, bytes)
                frame = self.conn.receive(message)
                if frame is None:
                    continue
                await self._dispatch(frame)
        except websockets.ConnectionClosed as closed:
            self._record_close(closed)
        finally:
            if self._ws.close_code is not None and self.close_code is None:
                self.close_code, self.close_reason = self._ws.close_code, self._ws.close_reason or ""
            self.closed.set()

    async def _dispatch(self, frame: object) -> None:
        if isinstance(frame, Ping):
            if self.answer_pings:
                await self.send(Pong(frame.nonce))
        elif isinstance(frame, ReauthOk):
            self.reauth_ok.append(frame)
        elif isinstance(frame, Open):
            self.opens.append(frame)
            queue: asyncio.Queue[bytes | None] = asyncio.Queue()
            if not frame.has_body:
                queue.put_nowait(None)
            self._bodies[frame.stream_id] = queue
            self._tasks[frame.stream_id] = asyncio.create_task(self._serve(frame, queue))
        elif isinstance(frame, Data):
            self.max_unconsumed = max(self.max_unconsumed, self.conn.buffered_bytes)
            self._bodies[frame.stream_id].put_nowait(frame.payload)
        elif isinstance(frame, End):
            self._bodies[frame.stream_id].put_nowait(None)
        elif isinstance(frame, (Cancel, StreamError)):
            self.cancelled[frame.stream_id] = time.monotonic()
            task = self._tasks.get(frame.stream_id)
            if task is not None:
                task.cancel()

    async def _serve(self, open_frame: Open, queue: asyncio.Queue[bytes | None]) -> None:
        body = bytearray()
        while (chunk := await queue.get()) is not None:
            body += chunk
            credit = self.conn.consumed(open_frame.stream_id, len(chunk))
            if credit is not None and self._ws is not None:
                async with self._lock:
                    await self._ws.send(self.conn.send(credit))
        reply = await self.handler(open_frame, bytes(body))
        sid = open_frame.stream_id
        try:
            if isinstance(reply, StreamError):
                await self.send(reply)
                return
            await self.send(ResponseHead(sid, reply.status, reply.headers))
            if reply.chunks is not None:
                async for chunk in reply.chunks:
                    view = memoryview(chunk)
                    while view:
                        allowed = await self.conn.wait_for_credit(sid)
                        await self.send(Data(sid, bytes(view[:allowed])))
                        view = view[allowed:]
            await self.send(End(sid))
        except (StreamClosedError, websockets.ConnectionClosed):
            return
