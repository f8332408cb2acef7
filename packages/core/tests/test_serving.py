"""The serve helper in a real process: settings errors, graceful SIGTERM with a request in flight."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

SERVICE = Path(__file__).with_name("sample_service.py")


def _start(env: dict[str, str], *, without: str | None = None) -> subprocess.Popen[str]:
    """The sample service; ``without``: a module it runs without, as if not installed."""
    blocked = f"sys.modules[{without!r}] = None; " if without else ""
    start = f"import runpy, sys; {blocked}runpy.run_path({str(SERVICE)!r}, run_name='__main__')"
    return subprocess.Popen(
        [sys.executable, "-c", start],
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@contextmanager
def _running(without: str | None = None) -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = _start({"SAMPLE_PORT": "0", "SAMPLE_GREETING": "hi"}, without=without)
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 20
        port = None
        while port is None and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            record = json.loads(line)
            port = record.get("port") if record["msg"] == "listening" else None
        assert port, "the service did not report its port"
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


@pytest.fixture
def service() -> Iterator[tuple[subprocess.Popen[str], str]]:
    with _running() as running:
        yield running


def test_without_websockets_an_upgrade_is_a_plain_request_and_logs_no_warning() -> None:
    # core[service] without core[websockets] (a file server): serve() starts, upgrades are not WebSockets.
    with _running(without="websockets") as (proc, base_url):
        upgrade = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13"}
        for _ in range(3):
            assert httpx.get(base_url + "/health", headers=upgrade, timeout=10).status_code == 200
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=20)
    levels = [json.loads(line)["level"] for line in stdout.splitlines() if line.startswith("{")]
    assert levels and "warning" not in levels and "error" not in levels


def test_bad_settings_exit_2_naming_every_variable() -> None:
    proc = _start({"SAMPLE_PORT": "not-a-port", "SAMPLE_GRACEFUL_TIMEOUT_S": "soon"})
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert stderr.startswith("sample-service: invalid configuration:")
    for name in ("SAMPLE_PORT", "SAMPLE_GREETING", "SAMPLE_GRACEFUL_TIMEOUT_S"):
        assert name in stderr
    assert "Traceback" not in stderr


async def _in_flight(proc: subprocess.Popen[str]) -> None:
    """Wait until the service logs that the slow request reached its handler (robust under load)."""
    assert proc.stdout is not None
    stdout = proc.stdout

    def read_until_started() -> None:
        for line in stdout:
            if '"slow request started"' in line:
                return
        raise AssertionError("the service exited before the request arrived")

    await asyncio.wait_for(asyncio.to_thread(read_until_started), 20)


async def _until_refused(base_url: str, timeout: float = 4) -> None:
    deadline = time.monotonic() + timeout
    no_reuse = httpx.Limits(max_keepalive_connections=0)  # each try is a new connection
    async with httpx.AsyncClient(base_url=base_url, timeout=2, limits=no_reuse) as fresh:
        while True:
            try:
                await fresh.get("/health")
            except httpx.TransportError:
                return
            assert time.monotonic() < deadline, f"still accepting new connections {timeout} s after SIGTERM"
            await asyncio.sleep(0.02)


async def test_sigterm_lets_the_in_flight_request_finish_then_exits_0(
    service: tuple[subprocess.Popen[str], str],
) -> None:
    proc, base_url = service
    async with httpx.AsyncClient(base_url=base_url, timeout=20) as client:
        assert (await client.get("/health")).status_code == 200
        in_flight = asyncio.create_task(client.get("/slow", params={"seconds": "1.5"}))
        await _in_flight(proc)
        proc.send_signal(signal.SIGTERM)
        response = await in_flight
    assert response.status_code == 200
    assert response.json() == {"done": True, "greeting": "hi"}
    assert await asyncio.to_thread(proc.wait, 15) == 0


async def test_after_sigterm_new_connections_are_refused(service: tuple[subprocess.Popen[str], str]) -> None:
    proc, base_url = service
    async with httpx.AsyncClient(base_url=base_url, timeout=20) as client:
        in_flight = asyncio.create_task(client.get("/slow", params={"seconds": "5"}))
        await _in_flight(proc)
        proc.send_signal(signal.SIGTERM)
        # Event-driven: however long the signal takes to act, new connections end up refused while the
        # request in flight is still being served (it lasts 5 s; the listener closes within milliseconds).
        await _until_refused(base_url)
        assert not in_flight.done()
        assert (await in_flight).status_code == 200
    assert await asyncio.to_thread(proc.wait, 15) == 0


async def test_websocket_compression_is_declined() -> None:
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket
    from websockets.asyncio.client import connect

    from cloudtolocalllm.core.testing import running_server

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_bytes(await websocket.receive_bytes())
        await websocket.close()

    app = Starlette(routes=[WebSocketRoute("/ws", echo)])
    async with running_server(app) as url:
        # websockets offers permessage-deflate by default; the server must not take it.
        async with connect(url.replace("http", "ws", 1) + "/ws") as ws:
            assert ws.response is not None
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            await ws.send(b"x" * 10_000)
            assert await ws.recv() == b"x" * 10_000


async def test_accepted_connections_have_nagle_off() -> None:
    """A body written after its head must not wait for the client's delayed ACK (~40 ms per request)."""
    from cloudtolocalllm.core.serving import bind_socket

    sock = bind_socket("127.0.0.1", 0)
    accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    class Probe(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            conn = transport.get_extra_info("socket")
            accepted.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            transport.close()

    server = await asyncio.get_running_loop().create_server(Probe, sock=sock)
    async with server:
        _, writer = await asyncio.open_connection(*sock.getsockname()[:2])
        assert await asyncio.wait_for(accepted, 10) != 0
        writer.close()


async def _raw_exchange(url: str, head: bytes) -> bytes:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.read(-1), 10)
    finally:
        writer.close()


async def test_oversized_heads_are_refused_with_json_431_and_refusals_log_no_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """serve() bounds request heads for every route (WebSocket upgrades too) and refuses quietly."""
    import logging

    from starlette.applications import Starlette
    from starlette.responses import JSONResponse, PlainTextResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket

    from cloudtolocalllm.core.testing import running_server

    async def refuse(websocket: WebSocket) -> None:
        await websocket.send_denial_response(JSONResponse({"error": "no"}, status_code=401))

    async def hello(request: object) -> PlainTextResponse:
        return PlainTextResponse("hi")

    app = Starlette(routes=[Route("/", hello), WebSocketRoute("/ws", refuse)])
    caplog.set_level(logging.INFO)
    upgrade = b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    upgrade += b"Sec-WebSocket-Version: 13\r\n"
    async with running_server(app, max_header_bytes=12 * 1024) as url:
        for path, extra in ((b"/", b"Connection: close\r\n"), (b"/ws", upgrade)):
            big = b"GET " + path + b" HTTP/1.1\r\nHost: t\r\n" + extra + b"X-Pad: " + b"p" * 9000 + b"\r\n\r\n"
            answer = await _raw_exchange(url, big)
            assert answer.startswith(b"HTTP/1.1 431 "), answer[:100]
            assert answer.endswith(b'{"error":"request header line too long (at most 8192 bytes per line)"}\n')
            many = [b"X-Pad-%d: %s\r\n" % (n, b"q" * 3000) for n in range(5)]  # 15 KiB: over the 12 KiB set
            answer = await _raw_exchange(
                url, b"GET " + path + b" HTTP/1.1\r\nHost: t\r\n" + extra + b"".join(many) + b"\r\n"
            )
            assert b'{"error":"request headers too large (at most 12288 bytes in all)"}' in answer
        assert (await _raw_exchange(url, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")).endswith(b"hi")
        for _ in range(10):
            answer = await _raw_exchange(url, b"GET /ws HTTP/1.1\r\nHost: t\r\n" + upgrade + b"\r\n")
            assert answer.startswith(b"HTTP/1.1 401 ")
        await asyncio.sleep(0.1)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_a_clients_writes_wait_above_16_kib_buffered_and_a_websockets_above_the_loops_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A slow reader pins its credit window and little more; a bridge's tunnel keeps the larger buffer."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket
    from websockets.asyncio.client import connect

    from cloudtolocalllm.core.server_protocols import CLIENT_WRITE_HIGH_WATER, BoundedHttpToolsProtocol
    from cloudtolocalllm.core.testing import running_server

    transports: list[asyncio.Transport] = []
    made = BoundedHttpToolsProtocol.connection_made

    def recording(self: BoundedHttpToolsProtocol, transport: asyncio.Transport) -> None:
        transports.append(transport)
        made(self, transport)

    monkeypatch.setattr(BoundedHttpToolsProtocol, "connection_made", recording)

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_bytes(await websocket.receive_bytes())

    app = Starlette(routes=[Route("/", lambda _: PlainTextResponse("ok")), WebSocketRoute("/ws", echo)])
    async with running_server(app) as url:
        async with httpx.AsyncClient() as client:
            assert (await client.get(url + "/")).text == "ok"
            assert [t.get_write_buffer_limits() for t in transports] == [
                (CLIENT_WRITE_HIGH_WATER // 4, CLIENT_WRITE_HIGH_WATER)
            ]
        async with connect(url.replace("http", "ws", 1) + "/ws") as ws:
            await ws.send(b"x")
            assert await ws.recv() == b"x"
            assert transports[-1].get_write_buffer_limits() == (64 * 1024 // 4, 64 * 1024)  # asyncio's default


async def test_a_requests_scope_carries_a_future_done_when_its_connection_closes() -> None:
    """An endpoint learns of a client that left without a task reading receive() (api-backend's relay)."""
    from starlette.types import Receive, Scope, Send

    from cloudtolocalllm.core.server_protocols import connection_lost
    from cloudtolocalllm.core.testing import running_server

    seen: list[asyncio.Future[None] | None] = []
    lost_seen = asyncio.Event()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        lost = connection_lost(scope)
        seen.append(lost)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"first", "more_body": True})
        if scope["path"] == "/hold" and lost is not None:
            await asyncio.wait_for(asyncio.shield(lost), 10)
            lost_seen.set()

    async with running_server(app) as url:
        host, port = url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /hold HTTP/1.1\r\nHost: t\r\n\r\n")
        assert b"first" in await asyncio.wait_for(reader.readuntil(b"first"), 10)
        assert seen[0] is not None and not seen[0].done()  # open while the client is
        writer.close()
        await asyncio.wait_for(lost_seen.wait(), 10)
    assert seen[0].done()
    assert connection_lost({"type": "http"}) is None  # another server: the caller falls back to receive()


async def test_a_websocket_pauses_reading_only_while_its_app_is_behind_and_loses_no_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uvicorn's rule (pause after every message) costs two epoll_ctl calls a message; ours, none in step."""
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket
    from websockets.asyncio.client import connect

    from cloudtolocalllm.core.testing import running_server
    from cloudtolocalllm.core.websocket_protocol import ServingWebSocketProtocol

    protocols: list[ServingWebSocketProtocol] = []
    pauses: list[int] = []
    made = ServingWebSocketProtocol.connection_made

    def recording(self: ServingWebSocketProtocol, transport: asyncio.Transport) -> None:  # type: ignore[override]
        protocols.append(self)
        pause = transport.pause_reading

        def counted() -> None:
            pauses.append(len(pauses))
            pause()

        transport.pause_reading = counted  # type: ignore[method-assign]
        made(self, transport)

    monkeypatch.setattr(ServingWebSocketProtocol, "connection_made", recording)
    stalled = asyncio.Event()
    go_on = asyncio.Event()
    block = b"m" * 32 * 1024

    async def app(websocket: WebSocket) -> None:
        await websocket.accept()
        for _ in range(50):  # in step: each message is taken before the next is sent
            await websocket.send_bytes(await websocket.receive_bytes())
        stalled.set()
        await go_on.wait()
        received = [await websocket.receive_bytes() for _ in range(200)]
        await websocket.send_bytes(str(sum(len(m) for m in received)).encode())

    async with running_server(Starlette(routes=[WebSocketRoute("/ws", app)])) as url:
        async with connect(url.replace("http", "ws", 1) + "/ws", max_size=None) as ws:
            for n in range(50):
                await ws.send(b"%d" % n)
                assert await ws.recv() == b"%d" % n
            await asyncio.wait_for(stalled.wait(), 10)
            assert pauses == []  # an app in step never pauses reading
            sender = asyncio.create_task(_send_all(ws, [block] * 200))  # 6.4 MB the app does not take yet
            await asyncio.sleep(0.5)
            transport = protocols[0].transport
            assert pauses and not transport.is_reading()  # behind: the server stopped reading
            assert protocols[0].queue.qsize() < 200
            go_on.set()
            await asyncio.wait_for(sender, 10)
            assert await asyncio.wait_for(ws.recv(), 10) == str(200 * len(block)).encode()  # nothing lost


async def _send_all(ws: Any, messages: list[bytes]) -> None:
    for message in messages:
        await ws.send(message)


def test_on_uvloop_a_stalled_reader_leaves_one_piece_with_uvloop_and_a_websocket_gets_its_transport_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """uvloop keeps a written object whole until sent: a stalled client's large chunks go out piecewise."""
    import uvloop
    from starlette.applications import Starlette
    from starlette.responses import StreamingResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket
    from websockets.asyncio.client import connect

    from cloudtolocalllm.core.piecewise_transport import PIECE, PiecewiseTransport
    from cloudtolocalllm.core.server_protocols import BoundedHttpToolsProtocol
    from cloudtolocalllm.core.testing import running_server

    protocols: list[BoundedHttpToolsProtocol] = []
    made = BoundedHttpToolsProtocol.connection_made

    def recording(self: BoundedHttpToolsProtocol, transport: asyncio.Transport) -> None:
        transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        protocols.append(self)
        made(self, transport)

    monkeypatch.setattr(BoundedHttpToolsProtocol, "connection_made", recording)
    chunks = [bytes([n]) * 256 * 1024 for n in range(8)]

    async def chunks_body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_bytes(await websocket.receive_bytes())

    app = Starlette(routes=[Route("/", lambda _: StreamingResponse(chunks_body())), WebSocketRoute("/ws", echo)])

    async def main() -> None:
        async with running_server(app) as url:
            host, port = url.removeprefix("http://").rsplit(":", 1)
            with socket.socket() as client:  # closed on failure too: a stalled client would hold the shutdown
                client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                client.connect((host, int(port)))
                client.setblocking(False)
                loop = asyncio.get_running_loop()
                await loop.sock_sendall(client, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                await asyncio.sleep(0.3)  # the client reads nothing: the socket stops taking
                pieces = protocols[0].transport
                assert isinstance(pieces, PiecewiseTransport)
                held_by_uvloop = pieces.transport.get_write_buffer_size()
                assert 0 < held_by_uvloop <= PIECE + 16, held_by_uvloop
                received = bytearray()
                while data := await loop.sock_recv(client, 65536):
                    received += data
            head, _, body = bytes(received).partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert _dechunked(body) == b"".join(chunks)  # every byte, in order, then the close
            async with connect(url.replace("http", "ws", 1) + "/ws", max_size=None) as ws:
                await ws.send(b"x" * 1_000_000)
                assert await ws.recv() == b"x" * 1_000_000
            assert not isinstance(protocols[-1].transport, PiecewiseTransport)

    uvloop.run(main())


def _dechunked(body: bytes) -> bytes:
    out = bytearray()
    while True:
        size_line, _, body = body.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return bytes(out)
        out += body[:size]
        body = body[size + 2 :]
