"""A fake bridge for api-backend's tests: a scriptable bridge over a real WebSocket.

It dials ``/ws/bridge`` with a bearer token, runs the bridge's handshake (``tunnel.greet``) and then the tunnel
runtime, so credit, the one writer and Ping answers behave as the real bridge's do. Each Open is answered by
``handler(open, body) -> Reply | StreamError``; a Reply is a status, headers and an async iterator of body
chunks, so a test controls timing chunk by chunk. It records what the cloud did (``opens``, ``cancelled``,
``reauth_ok``, the close code) and can misbehave on purpose: another protocol version, no Pong answers, raw
bytes (:meth:`FakeBridge.send_raw`), a dropped TCP connection (:meth:`FakeBridge.kill`).

The real bridge has its own tests against the fake cloud; end-to-end tests run it with a real model.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import websockets

from cloudtolocalllm.devkit.peers.wire_tap import WireTap
from cloudtolocalllm.protocol import (
    PROTOCOL_VERSION,
    BackendKind,
    BridgeStatus,
    Cancel,
    Connection,
    Frame,
    Hello,
    Open,
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
from cloudtolocalllm.protocol.tunnel import (
    HandshakeFailed,
    Heartbeat,
    MessageTransport,
    StreamFailed,
    TransportClosed,
    Tunnel,
    TunnelStream,
    greet,
)
from cloudtolocalllm.protocol.tunnel.websockets_transport import WebsocketsTransport

__all__ = ["FakeBridge", "Handler", "Reply", "chunks_of", "echo_handler"]

_HANDSHAKE_TIMEOUT_S = 5.0
_NEVER_S = 24 * 3600.0  # the fake bridge does not watch the cloud's silence: the real bridge's tests do


@dataclass
class Reply:
    status: int = 200
    headers: list[tuple[str, str]] = field(default_factory=lambda: [("content-type", "application/json")])
    chunks: AsyncIterator[bytes] | None = None


async def chunks_of(*parts: bytes, delay: float = 0.0) -> AsyncIterator[bytes]:
    """``parts`` one after another (``delay`` seconds before each)."""
    for part in parts:
        if delay:
            await asyncio.sleep(delay)
        yield part


Handler = Callable[[Open, bytes], Awaitable[Reply | StreamError]]


async def echo_handler(open_frame: Open, body: bytes) -> Reply:
    return Reply(chunks=chunks_of(b'{"path":"' + open_frame.path.encode() + b'"}'))


def _is_pong(frame: Frame) -> bool:
    return isinstance(frame, Pong)


class FakeBridge:
    """``async with FakeBridge(cloud_url, token) as bridge``, or :meth:`connect` to watch a refused handshake."""

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        bridge_id: str = "bridge-1",
        name: str = "test bridge",
        models: list[str] | None = None,
        handler: Handler = echo_handler,
        answer_pings: bool = True,
        version: int = PROTOCOL_VERSION,
    ) -> None:
        self.url = base_url.replace("http://", "ws://") + "/ws/bridge"
        self.token = token
        self.bridge_id = bridge_id
        self.name = name
        self.models = ["smollm2:135m"] if models is None else models
        self.handler = handler
        self.answer_pings = answer_pings
        self.version = version
        self.conn = Connection(Role.BRIDGE)
        self.opens: list[Open] = []
        self.cancelled: dict[int, float] = {}
        """Stream id -> monotonic time the stream was reset (the cloud's Cancel or StreamError, or this side's
        reply to a frame of the cloud's that broke a rule)."""
        self.welcome: Welcome | None = None
        self.reauth_ok: list[ReauthOk] = []
        self.close_code: int | None = None
        self.close_reason: str = ""
        self.max_unconsumed = 0
        """The most request-body bytes ever received and not yet consumed (what the cloud's credit bounds)."""
        self.closed = asyncio.Event()
        self._transport: MessageTransport | None = None
        self._tunnel: Tunnel | None = None
        self._reader: asyncio.Task[None] | None = None
        self._tasks: dict[int, asyncio.Task[None]] = {}

    async def __aenter__(self) -> FakeBridge:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.disconnect()

    def _hello(self) -> Hello:
        models = list(self.models)
        return Hello(self.version, self.bridge_id, self.name, "0.0.1", "linux", BackendKind.OLLAMA, True, models)

    async def connect(self) -> None:
        """Dial and handshake; a refused WebSocket handshake raises, a close instead of a Welcome sets
        ``closed`` and the close code."""
        ws = await websockets.connect(
            self.url, additional_headers={"Authorization": f"Bearer {self.token}"}, max_size=None
        )
        transport: MessageTransport = WebsocketsTransport(ws)
        if not self.answer_pings:  # the runtime answers every Ping: the tap keeps the answers off the wire
            transport = WireTap(transport, drop_sent=_is_pong)
        self._transport = transport
        if self.version != PROTOCOL_VERSION:
            await self._greet_as_another_version(transport)
            return
        try:
            welcome = await greet(transport, self.conn, self._hello(), timeout_s=_HANDSHAKE_TIMEOUT_S)
        except HandshakeFailed as failed:
            if failed.close_code is not None:
                await transport.close(failed.close_code, failed.close_reason)
            self._ended()
            return
        assert isinstance(welcome, Welcome), welcome
        self.welcome = welcome
        self._tunnel = Tunnel(
            transport,
            self.conn,
            heartbeat=Heartbeat(dead_after_s=_NEVER_S),
            on_frame=self._on_frame,
            lost_reason="cloud disconnected",
            keep_writer=True,
        )
        self._reader = asyncio.create_task(self._read(self._tunnel))

    async def _greet_as_another_version(self, transport: MessageTransport) -> None:
        # The Connection only sends a Hello of its own version: this one goes out encoded by hand.
        await transport.send(encode(self._hello()))
        try:
            message = await transport.receive()
        except TransportClosed:
            self._ended()
            return
        raise AssertionError(f"the cloud answered a Hello of protocol v{self.version}: {message!r}")

    def _ended(self) -> None:
        assert self._transport is not None
        if self.close_code is None:
            self.close_code, self.close_reason = self._transport.close_code, self._transport.close_reason
        self.closed.set()

    async def _read(self, tunnel: Tunnel) -> None:
        try:
            await tunnel.run()
        finally:
            self._ended()

    async def disconnect(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        if self._tunnel is not None:
            await self._tunnel.close(1000, "")
        elif self._transport is not None:
            await self._transport.close(1000, "")
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader

    async def kill(self) -> None:
        """Drop the TCP connection without a close handshake (a crash or a pulled cable)."""
        assert self._transport is not None
        self._transport.abort()
        await asyncio.sleep(0)

    async def send(self, frame: Frame) -> None:
        """Send any frame the bridge may send (queued for the one writer, in order)."""
        assert self._tunnel is not None
        self._tunnel.send(frame)

    async def send_raw(self, data: bytes) -> None:
        """Put ``data`` on the wire as one message, past the Connection: for protocol-violation tests."""
        assert self._transport is not None
        await self._transport.send(data)

    async def reauth(self, token: str) -> None:
        await self.send(Reauth(token))

    async def report(self, *, reachable: bool, models: list[str]) -> None:
        await self.send(BridgeStatus(reachable, models))

    def _on_frame(self, frame: Frame) -> None:
        if isinstance(frame, Open):
            self._accept(frame)
        elif isinstance(frame, ReauthOk):
            self.reauth_ok.append(frame)
        elif isinstance(frame, Cancel | StreamError):
            self.cancelled[frame.stream_id] = time.monotonic()
            task = self._tasks.get(frame.stream_id)
            if task is not None:
                task.cancel()

    def _accept(self, frame: Open) -> None:
        assert self._tunnel is not None
        self.opens.append(frame)
        stream = self._tunnel.accept_stream(frame.stream_id)  # now: its Data may be the very next message
        self._tasks[frame.stream_id] = asyncio.create_task(self._serve(frame, stream))

    async def _serve(self, open_frame: Open, stream: TunnelStream) -> None:
        sid = open_frame.stream_id
        try:
            body = bytearray()
            if open_frame.has_body:
                while (chunk := await stream.read(coalesce=0)) is not None:
                    # Sampled before each consumption: buffered bytes only grow between two of them.
                    self.max_unconsumed = max(self.max_unconsumed, self.conn.buffered_bytes)
                    body += chunk
                    stream.consumed(len(chunk))
            reply = await self.handler(open_frame, bytes(body))
            if isinstance(reply, StreamError):
                stream.reset(reply)
                return
            await stream.send(ResponseHead(sid, reply.status, reply.headers))
            if reply.chunks is not None:
                async for chunk in reply.chunks:
                    await stream.send_body(chunk)
            await stream.end_body()
        except (StreamFailed, StreamClosedError, TransportClosed):
            return  # reset by the cloud, or the connection went away
        finally:
            self._tasks.pop(sid, None)
            if self._tunnel is not None:
                self._tunnel.release(stream)
