"""The Backend seam: header filtering, URL building, probes, the OpenAI-compatible kind and auto-detection."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest

from cloudtolocalllm.bridge.backend import (
    BackendError,
    BackendResponse,
    HttpBackend,
    OpenAIBackend,
    detect_kind,
    make_backend,
    response_headers,
)
from cloudtolocalllm.devkit.ollama import OllamaDouble
from cloudtolocalllm.devkit.peers import FakeCloud
from cloudtolocalllm.protocol import BackendKind, ErrorCode, ResponseHead, StreamError


def test_response_headers_drop_hop_by_hop() -> None:
    raw = [
        (b"Content-Type", b"application/x-ndjson"),
        (b"Transfer-Encoding", b"chunked"),
        (b"Connection", b"keep-alive, X-Private"),
        (b"Keep-Alive", b"timeout=5"),
        (b"X-Private", b"1"),
        (b"Proxy-Authenticate", b"Basic"),
        (b"Upgrade", b"h2c"),
        (b"Trailer", b"x"),
        (b"Content-Length", b"12"),
        (b"Content-Encoding", b"gzip"),
    ]
    kept = {name.lower() for name, _ in response_headers(raw)}
    assert kept == {"content-type", "content-length", "content-encoding"}


@dataclass
class SeenRequest:
    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


@pytest.fixture
async def recorder() -> AsyncIterator[tuple[str, list[SeenRequest]]]:
    """A real HTTP/1.1 server on loopback that records what arrives on the wire and answers with JSON."""
    seen: list[SeenRequest] = []
    answer = json.dumps({"models": [{"name": "b"}, {"name": "a"}, {"x": 1}], "data": [{"id": "m"}]}).encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                method, target, _ = head[0].split(" ", 2)
                headers = [tuple(x.strip() for x in line.split(":", 1)) for line in head[1:] if ":" in line]
                length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
                seen.append(SeenRequest(method, target, headers, await reader.readexactly(length)))  # type: ignore[arg-type]
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
                writer.write(b"set-cookie: session=from-the-backend; Path=/\r\n")
                writer.write(b"content-length: %d\r\n\r\n%s" % (len(answer), answer))
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}", seen


async def test_request_headers_and_url(recorder: tuple[str, list[SeenRequest]]) -> None:
    url, seen = recorder
    backend = HttpBackend(url + "/prefix")
    response = await backend.request(
        "POST",
        "/api/chat",
        "a=1&b=%2F",
        [
            ("Content-Type", "application/json"),
            ("Host", "evil.example.com"),
            ("Authorization", "Bearer x"),
            ("Cookie", "s=1"),
            ("Connection", "close, X-Hop"),
            ("X-Hop", "1"),
            ("TE", "trailers"),
            ("Proxy-Authorization", "Basic x"),
            ("X-Request-Id", "r1"),
            ("Content-Length", "2"),
        ],
        _body(b"{}"),
    )
    assert json.loads(b"".join([chunk async for chunk in response.body]))["data"] == [{"id": "m"}]
    await response.aclose()
    await backend.aclose()
    request = seen[0]
    assert (request.method, request.target) == ("POST", "/prefix/api/chat?a=1&b=%2F")  # query kept byte for byte
    assert request.header("host") == url.removeprefix("http://")
    for dropped in ("authorization", "cookie", "x-hop", "te", "proxy-authorization", "transfer-encoding", "accept"):
        assert request.header(dropped) is None, dropped
    assert request.header("x-request-id") == "r1"
    assert request.header("content-type") == "application/json"
    assert request.body == b"{}" and request.header("content-length") == "2"  # a known length stays unchunked
    assert request.header("accept-encoding") == "identity"  # the body is relayed undecoded
    assert str(request.header("user-agent")).startswith("cloudtolocalllm-bridge/")


async def test_a_cookie_the_backend_sets_goes_to_the_client_and_never_into_the_next_request(
    recorder: tuple[str, list[SeenRequest]],
) -> None:
    """The bridge is a relay, not a browser: it keeps no cookie jar across the requests it carries."""
    url, seen = recorder
    # A host name: aiohttp's jar never keeps cookies for an IP address, so 127.0.0.1 could not show the bug.
    backend = HttpBackend(url.replace("127.0.0.1", "localhost"))
    for _ in range(2):
        response = await backend.request("GET", "/api/tags", "", [], None)
        assert ("set-cookie", "session=from-the-backend; Path=/") in [(k.lower(), v) for k, v in response.headers]
        assert b"".join([chunk async for chunk in response.body])
        await response.aclose()
    await backend.aclose()
    assert [request.header("cookie") for request in seen] == [None, None]


async def _body(data: bytes) -> AsyncIterator[bytes]:
    yield data


async def test_url_never_leaves_the_base() -> None:
    backend = HttpBackend("http://127.0.0.1:11434/prefix")
    for path in ("/api/chat", "/v1/models/x:y"):
        url = backend.url_for(path, "q=1")
        assert (url.scheme, url.host, url.port) == ("http", "127.0.0.1", 11434)
        assert url.raw_path_qs == f"/prefix{path}?q=1"
    bare = HttpBackend("http://127.0.0.1:11434")
    for path in ("//evil.example.com/x", "@evil.example.com/x", "http://evil.example.com/x"):
        with pytest.raises(BackendError) as info:
            bare.url_for(path)
        assert info.value.code is ErrorCode.PATH_NOT_ALLOWED
    assert backend.url_for("//evil.example.com/x").host == "127.0.0.1"  # under the prefix: just a path


async def test_probe_lists_models_sorted(recorder: tuple[str, list[SeenRequest]]) -> None:
    url, seen = recorder
    backend = HttpBackend(url + "/prefix")
    state = await backend.probe()
    await backend.aclose()
    assert state.reachable and state.models == ("a", "b")
    assert seen[0].target == "/prefix/api/tags"
    openai = HttpBackend(url + "/prefix", kind=BackendKind.OPENAI)
    state = await openai.probe()
    await openai.aclose()
    assert state.models == ("m",) and seen[1].target == "/prefix/v1/models"


async def test_probe_of_a_dead_backend(dead_backend_url: str) -> None:
    backend = HttpBackend(dead_backend_url)
    state = await backend.probe()
    await backend.aclose()
    assert not state.reachable and "is Ollama running?" in state.detail


async def test_request_to_a_dead_backend(dead_backend_url: str) -> None:
    backend = make_backend(dead_backend_url, BackendKind.OPENAI)
    with pytest.raises(BackendError) as info:
        await backend.request("GET", "/v1/models", "", [], None)
    await backend.aclose()
    assert info.value.code is ErrorCode.BACKEND_UNREACHABLE
    assert "is your LLM server running?" in info.value.message


async def test_openai_backend_without_translator(recorder: tuple[str, list[SeenRequest]]) -> None:
    url, seen = recorder
    backend = OpenAIBackend(HttpBackend(url + "/prefix", kind=BackendKind.OPENAI), translator=None)
    response = await backend.request("GET", "/v1/models", "", [], None)
    await response.aclose()
    assert seen[0].target == "/prefix/v1/models"
    with pytest.raises(BackendError) as info:
        await backend.request("POST", "/api/chat", "", [], None)
    assert info.value.code is ErrorCode.BACKEND_ERROR and "translation not available yet" in info.value.message
    await backend.aclose()


async def test_openai_backend_uses_the_translator() -> None:
    upstream = HttpBackend("http://127.0.0.1:9/prefix", kind=BackendKind.OPENAI)  # never called
    calls: list[tuple[str, str]] = []

    async def translate(
        up: HttpBackend, method: str, path: str, query: str, headers: Any, body: AsyncIterator[bytes] | None
    ) -> BackendResponse:
        calls.append((method, path))

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"done":true}\n'

        return BackendResponse(200, [("content-type", "application/x-ndjson")], chunks())

    backend = OpenAIBackend(upstream, translator=translate)
    response = await backend.request("POST", "/api/chat", "", [], None)
    assert [chunk async for chunk in response.body] == [b'{"done":true}\n']
    assert calls == [("POST", "/api/chat")]
    await backend.aclose()


async def test_detect_kind(backend: OllamaDouble, dead_backend_url: str) -> None:
    assert await detect_kind(backend.url) is BackendKind.OLLAMA
    backend.openai = True
    assert await detect_kind(backend.url) is BackendKind.OPENAI
    assert await detect_kind(dead_backend_url) is None


@pytest.mark.slow
async def test_openai_kind_over_the_tunnel(cloud: FakeCloud, backend: OllamaDouble, start_bridge: Any) -> None:
    backend.openai = True
    # translator=None explicitly: this test is about the seam, not about the openai_compat module.
    seam = OpenAIBackend(HttpBackend(backend.url, kind=BackendKind.OPENAI), translator=None)
    await start_bridge(backend_kind="openai", backend_impl=seam)
    link = await cloud.next_link()
    assert link.hello.backend_kind == "openai"
    assert link.hello.models == ["llama3:8b", "smollm2:135m"]
    stream = await link.open("POST", "/v1/chat/completions", body=json.dumps({"stream": True}).encode())
    head = await stream.head()
    assert isinstance(head, ResponseHead) and ("content-type", "text/event-stream") in head.headers
    assert (await stream.body()).endswith(b"data: [DONE]\n\n")
    stream = await link.open("POST", "/api/chat", body=b"{}")
    error = await stream.head()
    assert isinstance(error, StreamError) and error.code == "backend_error"
    assert "translation not available yet" in error.message


@pytest.mark.slow
async def test_auto_kind_announces_what_it_found(cloud: FakeCloud, backend: OllamaDouble, start_bridge: Any) -> None:
    backend.openai = True
    await start_bridge(backend_kind="auto")
    link = await cloud.next_link()
    assert link.hello.backend_kind == "openai" and link.hello.backend_reachable


@pytest.mark.slow
async def test_auto_kind_with_the_backend_down_assumes_ollama(
    cloud: FakeCloud, start_bridge: Any, dead_backend_url: str
) -> None:
    await start_bridge(backend_kind="auto", backend_url=dead_backend_url)
    link = await cloud.next_link()
    assert link.hello.backend_kind == "ollama" and not link.hello.backend_reachable


@pytest.fixture
async def stalling() -> AsyncIterator[tuple[str, asyncio.Event]]:
    """Sends a streaming response head and one line, then nothing; ``closed`` is set when the peer hangs up."""
    closed = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n")
        writer.write(b"3\r\n{}\n\r\n")
        await writer.drain()
        await reader.read()  # returns when the client closes the connection
        closed.set()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    async with server:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", closed


async def test_idle_backend_times_out(stalling: tuple[str, asyncio.Event]) -> None:
    url, _ = stalling
    backend = HttpBackend(url, idle_timeout_s=0.3)
    response = await backend.request("POST", "/api/chat", "", [], None)
    assert await anext(response.body) == b"{}\n"
    with pytest.raises(BackendError) as info:
        await anext(response.body)
    await response.aclose()
    await backend.aclose()
    assert info.value.code is ErrorCode.TIMEOUT and "sent nothing for 0.3 s" in info.value.message


async def test_closing_early_aborts_the_backend_request(stalling: tuple[str, asyncio.Event]) -> None:
    url, closed = stalling
    backend = HttpBackend(url)
    response = await backend.request("POST", "/api/chat", "", [], None)
    assert await anext(response.body) == b"{}\n"
    await response.aclose()  # what a Cancel from the cloud does
    async with asyncio.timeout(2):
        await closed.wait()  # the backend sees the connection go: Ollama stops generating
    await backend.aclose()
