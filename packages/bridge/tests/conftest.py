"""Real peers for the tunnel tests: a fake cloud (websockets server + Connection(Role.CLOUD)) and the devkit's
Ollama double as the local backend (a raw ASGI app on uvicorn), both on 127.0.0.1 with ephemeral ports, plus a
running Bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from http import HTTPStatus
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import Request, Response, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from cloudtolocalllm.bridge.backend import Backend
from cloudtolocalllm.bridge.backoff import Backoff
from cloudtolocalllm.bridge.config import BridgeSettings
from cloudtolocalllm.bridge.runner import Bridge
from cloudtolocalllm.bridge.token import TokenSource
from cloudtolocalllm.core.testing import running_server
from cloudtolocalllm.devkit.ollama import OllamaDouble, OpenAIServer
from cloudtolocalllm.protocol import (
    PROTOCOL_VERSION,
    Cancel,
    Connection,
    Credit,
    Data,
    End,
    Frame,
    Hello,
    Limits,
    Open,
    Ping,
    Pong,
    ProtocolError,
    ResponseHead,
    Role,
    StreamError,
    Welcome,
)

TOKEN = "tok-1"
SMALL_LIMITS = Limits(max_frame_bytes=16 * 1024, initial_window=64 * 1024, max_concurrent_streams=16)


async def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``predicate`` until it holds; TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        await asyncio.sleep(0.01)


# --- the local backend: the devkit's Ollama double ---------------------------------------------------


@pytest.fixture
async def backend() -> AsyncIterator[OllamaDouble]:
    """Chat answers what a test puts in ``chat_queue``; a pull is 64 MB of progress, as fast as it is read."""
    fake = OllamaDouble(
        chat_queue=asyncio.Queue(),
        pull_bytes=64 * 1024 * 1024,
        openai_api=OpenAIServer(stream_content_type="text/event-stream"),
    )
    async with running_server(fake, graceful_timeout_s=0.5) as url:  # type: ignore[arg-type]
        fake.url = url
        yield fake
        assert fake.chat_queue is not None
        fake.chat_queue.put_nowait(None)


@pytest.fixture
def dead_backend_url() -> str:
    """A loopback URL where nothing listens (the port was bound, then released)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


# --- fake cloud ---------------------------------------------------------------------------------------


class CloudStream:
    """The cloud's view of one stream: frames from the bridge, in order."""

    def __init__(self, link: CloudLink, sid: int) -> None:
        self.link = link
        self.sid = sid
        self.frames: asyncio.Queue[Frame] = asyncio.Queue()
        self.data_times: list[float] = []

    async def next(self, timeout: float = 5.0) -> Frame:
        async with asyncio.timeout(timeout):
            return await self.frames.get()

    async def head(self) -> ResponseHead | StreamError:
        frame = await self.next()
        assert isinstance(frame, ResponseHead | StreamError), frame
        return frame

    async def body(self, timeout: float = 10.0) -> bytes:
        chunks = []
        while True:
            frame = await self.next(timeout)
            if isinstance(frame, End):
                return b"".join(chunks)
            assert isinstance(frame, Data), frame
            chunks.append(frame.payload)

    async def cancel(self) -> None:
        await self.link.send(Cancel(self.sid, "browser went away"))


class CloudLink:
    """One accepted bridge connection, speaking the protocol with Connection(Role.CLOUD)."""

    def __init__(self, ws: ServerConnection, conn: Connection, hello: Hello) -> None:
        self.ws = ws
        self.conn = conn
        self.hello = hello
        self.authorization = ws.request.headers.get("Authorization") if ws.request else None
        self.path = ws.request.path if ws.request else ""
        self.control: asyncio.Queue[Frame] = asyncio.Queue()
        self.streams: dict[int, CloudStream] = {}
        self.auto_credit = True
        self.answer_pings = True
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    async def send(self, frame: Frame) -> None:
        async with self._lock:
            await self.ws.send(self.conn.send(frame))

    async def run(self) -> None:
        try:
            async for message in self.ws:
                assert isinstance(message, bytes)
                frame = self.conn.receive(message)
                if frame is None:
                    continue
                sid = getattr(frame, "stream_id", None)
                if sid is None:
                    if isinstance(frame, Ping) and self.answer_pings:
                        await self.send(Pong(frame.nonce))  # as the real cloud does
                    self.control.put_nowait(frame)
                    continue
                stream = self.streams.get(sid)
                if stream is None or isinstance(frame, Credit):
                    continue  # Credit: the Connection has already added it to the send window
                if isinstance(frame, Data):
                    stream.data_times.append(time.monotonic())
                    if self.auto_credit:
                        await self.grant(sid, len(frame.payload))
                stream.frames.put_nowait(frame)
        except ConnectionClosed:
            pass
        finally:
            self.close_code = self.ws.close_code
            self.conn.close()
            self.closed.set()

    async def grant(self, sid: int, n: int) -> None:
        credit = self.conn.consumed(sid, n)
        if credit is not None:
            async with self._lock:
                await self.ws.send(self.conn.send(credit))

    async def control_frame(self, kind: type[Any], timeout: float = 5.0) -> Any:
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
        sid = self.conn.next_stream_id
        stream = CloudStream(self, sid)
        self.streams[sid] = stream
        await self.send(
            Open(sid, method, path, query, headers or [("content-type", "application/json")], body is not None)
        )
        if body is not None:
            task = asyncio.create_task(self._upload(sid, body))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return stream

    async def _upload(self, sid: int, body: bytes) -> None:
        offset = 0
        with contextlib.suppress(ProtocolError, ConnectionClosed):
            while offset < len(body):
                n = await self.conn.wait_for_credit(sid)
                await self.send(Data(sid, body[offset : offset + n]))
                offset += n
            await self.send(End(sid))


class FakeCloud:
    """A websockets server at /ws/bridge that checks the bearer token and runs the protocol handshake."""

    def __init__(self) -> None:
        self.tokens = {TOKEN}
        self.limits = SMALL_LIMITS
        self.heartbeat_interval_s = 20.0
        self.token_ttl_s: float | None = None
        self.refuse: tuple[int, str, dict[str, str]] | None = None
        """(status, body, headers) to refuse every handshake with."""
        self.close_after_hello: tuple[int, str] | None = None
        self.attempts: list[float] = []
        self.links: list[CloudLink] = []
        self._new_links: asyncio.Queue[CloudLink] = asyncio.Queue()
        self.url = ""

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
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

    async def handler(self, ws: ServerConnection) -> None:
        conn = Connection(Role.CLOUD)
        message = await ws.recv()
        assert isinstance(message, bytes)
        hello = conn.receive(message)
        assert isinstance(hello, Hello)
        if self.close_after_hello is not None:
            await ws.close(*self.close_after_hello)
            return
        expires = time.time() + self.token_ttl_s if self.token_ttl_s else None
        welcome = Welcome(PROTOCOL_VERSION, f"s-{len(self.links) + 1}", self.heartbeat_interval_s, self.limits, expires)
        await ws.send(conn.send(welcome))
        link = CloudLink(ws, conn, hello)
        self.links.append(link)
        self._new_links.put_nowait(link)
        await link.run()

    async def next_link(self, timeout: float = 5.0) -> CloudLink:
        async with asyncio.timeout(timeout):
            return await self._new_links.get()


@pytest.fixture
async def cloud() -> AsyncIterator[FakeCloud]:
    fake = FakeCloud()
    async with serve(
        fake.handler,
        "127.0.0.1",
        0,
        process_request=fake.process_request,
        compression=None,
        ping_interval=None,
        max_size=16 * 1024 * 1024,
        close_timeout=1,
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        fake.url = f"http://127.0.0.1:{port}"
        yield fake
        server.close(close_connections=True)


# --- the bridge under test ----------------------------------------------------------------------------


class RunningBridge:
    def __init__(self, bridge: Bridge, task: asyncio.Task[int]) -> None:
        self.bridge = bridge
        self.task = task

    async def stop(self, timeout: float = 10.0) -> int:
        self.bridge.request_stop()
        async with asyncio.timeout(timeout):
            return await self.task


BridgeFactory = Callable[..., "asyncio.Future[RunningBridge] | Any"]


@pytest.fixture
async def start_bridge(tmp_path: Path, cloud: FakeCloud, backend: OllamaDouble) -> AsyncIterator[Callable[..., Any]]:
    started: list[RunningBridge] = []

    async def start(
        *,
        token_source: TokenSource | None = None,
        backoff: Backoff | None = None,
        backend_impl: Backend | None = None,
        **overrides: Any,
    ) -> RunningBridge:
        options: dict[str, Any] = {
            "cloud_url": cloud.url,
            "backend_url": backend.url,
            "state_dir": str(tmp_path / "state"),
            "name": "test-bridge",
            "status_interval_s": 30.0,
            "drain_timeout_s": 5.0,
            "handshake_timeout_s": 5.0,
        }
        options.update(overrides)
        settings = BridgeSettings(**options)
        bridge = Bridge(
            settings,
            token_source or TokenSource(env_token=TOKEN),
            backoff=backoff or Backoff(base_s=0.05, cap_s=0.2, stable_after_s=30, rng=random.Random(7)),
            token_poll_s=0.05,
            backend=backend_impl,
        )
        running = RunningBridge(bridge, asyncio.create_task(bridge.run()))
        started.append(running)
        return running

    yield start
    for running in started:
        if not running.task.done():
            await running.stop()
