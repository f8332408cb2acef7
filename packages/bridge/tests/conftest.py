"""Real peers for the tunnel tests: a fake cloud (websockets server + Connection(Role.CLOUD)) and a fake
local backend (a raw ASGI app on uvicorn), both on 127.0.0.1 with ephemeral ports, plus a running Bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
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
from cloudtolocalllm.core.protocol import (
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
from cloudtolocalllm.core.testing import running_server

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


# --- fake local backend -------------------------------------------------------------------------------


@dataclass
class FakeBackend:
    """An Ollama look-alike whose behaviour tests steer through asyncio objects (same event loop)."""

    models: list[str] = field(default_factory=lambda: ["llama3:8b", "smollm2:135m"])
    chat_chunks: asyncio.Queue[bytes | None] = field(default_factory=asyncio.Queue)
    chat_yielded: list[float] = field(default_factory=list)
    generate_disconnected_at: float | None = None
    embed_disconnected_at: float | None = None
    generate_started: asyncio.Event = field(default_factory=asyncio.Event)
    generate_done: asyncio.Event = field(default_factory=asyncio.Event)
    generate_chunks: int = 0
    """0: /api/generate streams until the client goes away; n: n chunks then the end."""
    pull_produced: int = 0
    pull_total: int = 64 * 1024 * 1024
    upload: dict[str, Any] = field(default_factory=dict)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    url: str = ""
    openai: bool = False
    """Behave like llama.cpp server / LM Studio: /v1 only, no Ollama-native API."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        path, method = scope["path"], scope["method"]
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        self.requests.append(
            (method, path + ("?" + scope["query_string"].decode() if scope["query_string"] else ""), headers)
        )
        if path.startswith("/api/") and self.openai:
            await _drain(receive)
            await _json(send, {"error": "not found"}, status=404)
        elif path == "/api/tags":
            await _json(send, {"models": [{"name": m} for m in self.models]})
        elif path == "/api/version":
            await _json(send, {"version": "0.9.0"})
        elif path == "/api/chat":
            await _drain(receive)
            await self._chat(send)
        elif path == "/api/generate":
            await _drain(receive)
            await self._generate(receive, send)
        elif path == "/api/embed":
            # Like a non-streaming generation: no response head until the work is done (never, here).
            await _drain(receive)
            await _wait_disconnect(receive)
            self.embed_disconnected_at = time.monotonic()
        elif path == "/api/pull":
            await _drain(receive)
            await self._pull(send)
        elif path.startswith("/api/blobs/"):
            await self._blob(receive, send)
        elif path == "/v1/models" and self.openai:
            await _json(send, {"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]})
        elif path == "/v1/chat/completions" and self.openai:
            await _drain(receive)
            await send(_start(200, "text/event-stream"))
            for event in (b'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n', b"data: [DONE]\n\n"):
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await _json(send, {"error": "not found"}, status=404)

    async def _chat(self, send: Any) -> None:
        await send(_start(200, "application/x-ndjson"))
        while (chunk := await self.chat_chunks.get()) is not None:
            self.chat_yielded.append(time.monotonic())
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _generate(self, receive: Any, send: Any) -> None:
        await send(_start(200, "application/x-ndjson"))
        self.generate_started.set()

        async def pump() -> None:
            n = 0
            while self.generate_chunks == 0 or n < self.generate_chunks:
                await send({"type": "http.response.body", "body": b'{"response":"x"}\n', "more_body": True})
                n += 1
                await asyncio.sleep(0.05)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            self.generate_done.set()

        task = asyncio.create_task(pump())
        waiter = asyncio.create_task(_wait_disconnect(receive))
        done, _ = await asyncio.wait({task, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if waiter in done:
            self.generate_disconnected_at = time.monotonic()
            task.cancel()
        else:
            waiter.cancel()
        await asyncio.gather(task, waiter, return_exceptions=True)

    async def _pull(self, send: Any) -> None:
        await send(_start(200, "application/x-ndjson"))
        line = b'{"status":"pulling","completed":1}' + b" " * 1000 + b"\n"
        while self.pull_produced < self.pull_total:
            await send({"type": "http.response.body", "body": line * 64, "more_body": True})
            self.pull_produced += len(line) * 64
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _blob(self, receive: Any, send: Any) -> None:
        digest = hashlib.sha256()
        size = 0
        while True:
            message = await receive()
            body = message.get("body", b"")
            digest.update(body)
            size += len(body)
            if not message.get("more_body"):
                break
        self.upload = {"size": size, "sha256": digest.hexdigest()}
        await _json(send, self.upload, status=201)


def _start(status: int, content_type: str) -> dict[str, Any]:
    return {"type": "http.response.start", "status": status, "headers": [(b"content-type", content_type.encode())]}


async def _json(send: Any, document: Any, status: int = 200) -> None:
    body = json.dumps(document).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _drain(receive: Any) -> None:
    while True:
        message = await receive()
        if message["type"] != "http.request" or not message.get("more_body"):
            return


async def _wait_disconnect(receive: Any) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


@pytest.fixture
async def backend() -> AsyncIterator[FakeBackend]:
    fake = FakeBackend()
    async with running_server(fake, graceful_timeout_s=0.5) as url:  # type: ignore[arg-type]
        fake.url = url
        yield fake
        fake.chat_chunks.put_nowait(None)


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
async def start_bridge(tmp_path: Path, cloud: FakeCloud, backend: FakeBackend) -> AsyncIterator[Callable[..., Any]]:
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
