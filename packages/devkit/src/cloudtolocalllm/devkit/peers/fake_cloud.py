"""A fake cloud for the bridge's tests: api-backend's side of ``/ws/bridge``, scripted by the test.

A websockets server on loopback checks the bearer token (or refuses every handshake as a test says), runs the
cloud's handshake (``tunnel.accept_hello``/``send_welcome``) and then the tunnel runtime, so frames, credit and
the one writer behave as the real cloud's do. A test holds each accepted connection as a :class:`CloudLink`:
it opens streams and reads the bridge's answer frame by frame (:class:`CloudStream`), holds back credit
(``auto_credit``), sends any frame it likes, and sees every frame without a stream (Pings, Pongs,
BridgeStatus, Reauth) in ``control``. Unlike the real cloud it never pings on its own, so a bridge's own
heartbeat can be shown against a silent cloud.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterable
from http import HTTPStatus
from typing import TypeVar

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from cloudtolocalllm.devkit.peers.wire_tap import WireTap
from cloudtolocalllm.protocol import (
    PROTOCOL_VERSION,
    Cancel,
    Connection,
    Data,
    End,
    Frame,
    Hello,
    Limits,
    ProtocolError,
    ResponseHead,
    Role,
    StreamError,
    Welcome,
)
from cloudtolocalllm.protocol.tunnel import (
    HandshakeFailed,
    Heartbeat,
    StreamFailed,
    TransportClosed,
    Tunnel,
    TunnelStream,
    accept_hello,
    send_welcome,
)
from cloudtolocalllm.protocol.tunnel.websockets_transport import WebsocketsTransport

__all__ = ["SMALL_LIMITS", "CloudLink", "CloudStream", "FakeCloud"]

FrameT = TypeVar("FrameT")

SMALL_LIMITS = Limits(max_frame_bytes=16 * 1024, initial_window=64 * 1024, max_concurrent_streams=16)
"""Small enough that credit and frame splitting show with bodies of a few hundred KiB."""
_HANDSHAKE_TIMEOUT_S = 5.0
_NEVER_S = 24 * 3600.0  # the fake cloud does not watch its bridge's silence: tests of it use the real cloud


class CloudStream:
    """The cloud's view of one stream it opened: the bridge's answer, frame by frame, as it arrived."""

    def __init__(self, link: CloudLink, stream: TunnelStream) -> None:
        self.link = link
        self.sid = stream.stream_id
        self._stream = stream
        self._head_taken = False

    async def next(self, timeout: float = 5.0) -> Frame:
        """The next frame of the answer: a ResponseHead first, then Data frames (one each, as sent) and an End;
        or the StreamError (or Cancel) that reset the stream."""
        async with asyncio.timeout(timeout):
            try:
                if not self._head_taken:
                    head = await asyncio.shield(self._stream.head)  # a timeout must not cancel the future
                    self._head_taken = True
                    return head
                chunk = await self._stream.read(coalesce=0)
            except StreamFailed:
                self._head_taken = True
                self.link.tunnel.release(self._stream)
                reset = self.link.resets.get(self.sid)
                if reset is None:
                    raise  # the connection ended under the stream
                return reset
        if chunk is None:
            self.link.tunnel.release(self._stream)
            return End(self.sid)
        if self.link.auto_credit:
            self._stream.consumed(len(chunk))
        return Data(self.sid, chunk)

    async def head(self) -> ResponseHead | StreamError:
        frame = await self.next()
        assert isinstance(frame, ResponseHead | StreamError), frame
        return frame

    async def body(self, timeout: float = 10.0) -> bytes:
        """The rest of the body, up to its End."""
        chunks: list[bytes] = []
        while True:
            frame = await self.next(timeout)
            if isinstance(frame, End):
                return b"".join(chunks)
            assert isinstance(frame, Data), frame
            chunks.append(frame.payload)

    @property
    def unread(self) -> bool:
        """Something of this stream has arrived that :meth:`next` has not returned yet."""
        return (not self._head_taken and self._stream.head.done()) or self._stream.has_chunk

    async def cancel(self) -> None:
        """Cancel the stream, as the cloud does when the browser goes away."""
        self._stream.reset(Cancel(self.sid, "browser went away"))


class CloudLink:
    """One accepted bridge connection, after the handshake."""

    def __init__(self, transport: WebsocketsTransport, conn: Connection, hello: Hello, request: Request | None) -> None:
        self.hello = hello
        self.authorization = request.headers.get("Authorization") if request else None
        self.path = request.path if request else ""
        self.control: asyncio.Queue[Frame] = asyncio.Queue()
        """Every frame without a stream that arrived, in order (the runtime has answered the Pings)."""
        self.resets: dict[int, Cancel | StreamError] = {}
        """The frame that reset each stream (the bridge's, or this side's reply to a broken rule)."""
        self.auto_credit = True
        """Credit each Data frame as :meth:`CloudStream.next` returns it; off, the test grants credit itself."""
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.tunnel = Tunnel(
            WireTap(transport, on_received=self._arrived),
            conn,
            heartbeat=Heartbeat(dead_after_s=_NEVER_S),
            on_frame=self._on_frame,
            keep_writer=True,
        )
        self._uploads: set[asyncio.Task[None]] = set()

    def _arrived(self, frame: Frame) -> None:
        if getattr(frame, "stream_id", None) is None:
            self.control.put_nowait(frame)

    def _on_frame(self, frame: Frame) -> None:
        if isinstance(frame, Cancel | StreamError):
            self.resets[frame.stream_id] = frame

    async def run(self) -> None:
        try:
            await self.tunnel.run()
        finally:
            for task in list(self._uploads):
                task.cancel()
            self.close_code = self.tunnel.transport.close_code
            self.closed.set()

    async def send(self, frame: Frame) -> None:
        """Send any frame the cloud may send (queued for the one writer, in order)."""
        self.tunnel.send(frame)

    async def grant(self, sid: int, n: int) -> None:
        """Report ``n`` bytes of stream ``sid`` consumed (with ``auto_credit`` off): Credit goes out when the
        protocol says so."""
        self.tunnel.consumed(sid, n)

    async def close(self, code: int, reason: str) -> None:
        """Close the WebSocket with ``code`` (after what is queued)."""
        await self.tunnel.close(code, reason)

    async def control_frame(self, kind: type[FrameT], timeout: float = 5.0) -> FrameT:
        """The next frame of ``kind`` in ``control`` (earlier frames of other kinds are passed over)."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.control.get()
                if isinstance(frame, kind):
                    return frame

    async def open(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        query: str = "",
        headers: list[tuple[str, str]] | None = None,
    ) -> CloudStream:
        """Open a stream; ``body`` is uploaded in the background, within the bridge's credit."""
        headers = headers or [("content-type", "application/json")]
        stream = self.tunnel.open_stream(method, path, query, headers, body is not None)
        if body is not None:
            task = asyncio.create_task(self._upload(stream, body))
            self._uploads.add(task)
            task.add_done_callback(self._uploads.discard)
        return CloudStream(self, stream)

    @staticmethod
    async def _upload(stream: TunnelStream, body: bytes) -> None:
        with contextlib.suppress(ProtocolError, TransportClosed):  # cancelled, or the connection went away
            await stream.send_body(body)
            await stream.end_body()


class FakeCloud:
    """``async with FakeCloud(tokens={...}) as cloud``: serves ``/ws/bridge`` on ``cloud.url`` (127.0.0.1, a free
    port) until the block ends; each attribute below may be changed before the bridge dials."""

    def __init__(self, *, tokens: Iterable[str], limits: Limits = SMALL_LIMITS) -> None:
        self.tokens = set(tokens)
        """Bearer tokens accepted; any other is refused with 401."""
        self.limits = limits
        self.heartbeat_interval_s = 20.0
        """Sent in the Welcome (the bridge declares the cloud dead after a few silent intervals)."""
        self.token_ttl_s: float | None = None
        """Sent in the Welcome as the token's expiry (the bridge reauthenticates before it)."""
        self.refuse: tuple[int, str, dict[str, str]] | None = None
        """(status, body, headers) to refuse every handshake with."""
        self.close_after_hello: tuple[int, str] | None = None
        """(close code, reason) to close with instead of a Welcome."""
        self.attempts: list[float] = []
        """The monotonic time of each handshake attempt."""
        self.links: list[CloudLink] = []
        self._new_links: asyncio.Queue[CloudLink] = asyncio.Queue()
        self._server: Server | None = None
        self.url = ""

    async def __aenter__(self) -> FakeCloud:
        self._server = await serve(
            self._handle,
            "127.0.0.1",
            0,
            process_request=self._process_request,
            compression=None,
            ping_interval=None,
            max_size=16 * 1024 * 1024,
            close_timeout=1,
        )
        port = next(iter(self._server.sockets)).getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close(close_connections=True)
        await self._server.wait_closed()

    async def next_link(self, timeout: float = 5.0) -> CloudLink:
        """The next connection to complete its handshake."""
        async with asyncio.timeout(timeout):
            return await self._new_links.get()

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.attempts.append(time.monotonic())
        if request.path != "/ws/bridge":
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        if self.refuse is not None:
            status, body, headers = self.refuse
            response = connection.respond(status, body)
            for name, value in headers.items():
                response.headers[name] = value
            return response
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.tokens:
            return connection.respond(HTTPStatus.UNAUTHORIZED, json.dumps({"error": "token expired"}))
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        transport = WebsocketsTransport(ws)
        conn = Connection(Role.CLOUD)
        try:
            hello = await accept_hello(transport, conn, timeout_s=_HANDSHAKE_TIMEOUT_S)
            if self.close_after_hello is not None:
                await transport.close(*self.close_after_hello)
                return
            expires = time.time() + self.token_ttl_s if self.token_ttl_s else None
            session_id = f"s-{len(self.links) + 1}"
            welcome = Welcome(PROTOCOL_VERSION, session_id, self.heartbeat_interval_s, self.limits, expires)
            await send_welcome(transport, conn, welcome)
        except HandshakeFailed as failed:
            if failed.close_code is not None:
                await transport.close(failed.close_code, failed.close_reason)
            return
        link = CloudLink(transport, conn, hello, ws.request)
        self.links.append(link)
        self._new_links.put_nowait(link)
        await link.run()
