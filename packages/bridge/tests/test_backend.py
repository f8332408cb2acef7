"""The Backend seam: header filtering, URL building, probes, the OpenAI-compatible kind and auto-detection."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
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
from cloudtolocalllm.core.protocol import BackendKind, ErrorCode, ResponseHead, StreamError

from .conftest import FakeBackend, FakeCloud


def test_response_headers_drop_hop_by_hop() -> None:
    headers = httpx.Headers(
        [
            ("Content-Type", "application/x-ndjson"),
            ("Transfer-Encoding", "chunked"),
            ("Connection", "keep-alive, X-Private"),
            ("Keep-Alive", "timeout=5"),
            ("X-Private", "1"),
            ("Proxy-Authenticate", "Basic"),
            ("Upgrade", "h2c"),
            ("Trailer", "x"),
            ("Content-Length", "12"),
            ("Content-Encoding", "gzip"),
        ]
    )
    kept = {name.lower() for name, _ in response_headers(headers)}
    assert kept == {"content-type", "content-length", "content-encoding"}


def _recording_backend(kind: BackendKind = BackendKind.OLLAMA) -> tuple[HttpBackend, list[httpx.Request]]:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"models": [{"name": "b"}, {"name": "a"}, {"x": 1}], "data": [{"id": "m"}]})

    backend = HttpBackend("http://127.0.0.1:11434/prefix", kind=kind, transport=httpx.MockTransport(handler))
    return backend, seen


async def test_request_headers_and_url() -> None:
    backend, seen = _recording_backend()
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
        ],
        None,
    )
    await response.aclose()
    request = seen[0]
    assert str(request.url) == "http://127.0.0.1:11434/prefix/api/chat?a=1&b=%2F"
    assert request.headers["host"] == "127.0.0.1:11434"
    for dropped in ("authorization", "cookie", "x-hop", "te", "proxy-authorization"):
        assert dropped not in request.headers
    assert request.headers["x-request-id"] == "r1"
    assert request.headers["accept-encoding"] == "identity"  # the body is relayed undecoded


async def test_url_never_leaves_the_base() -> None:
    backend, _ = _recording_backend()
    for path in ("/api/chat", "/v1/models/x:y"):
        url = backend.url_for(path, "q=1")
        assert (url.scheme, url.host, url.port) == ("http", "127.0.0.1", 11434)
    await backend.aclose()


async def test_probe_lists_models_sorted() -> None:
    backend, seen = _recording_backend()
    state = await backend.probe()
    assert state.reachable and state.models == ("a", "b")
    assert seen[0].url.path == "/prefix/api/tags"
    openai, seen = _recording_backend(BackendKind.OPENAI)
    state = await openai.probe()
    assert state.models == ("m",) and seen[0].url.path == "/prefix/v1/models"


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


async def test_openai_backend_without_translator() -> None:
    upstream, seen = _recording_backend(BackendKind.OPENAI)
    backend = OpenAIBackend(upstream, translator=None)
    response = await backend.request("GET", "/v1/models", "", [], None)
    await response.aclose()
    assert seen[0].url.path == "/prefix/v1/models"
    with pytest.raises(BackendError) as info:
        await backend.request("POST", "/api/chat", "", [], None)
    assert info.value.code is ErrorCode.BACKEND_ERROR and "translation not available yet" in info.value.message
    await backend.aclose()


async def test_openai_backend_uses_the_translator() -> None:
    upstream, _ = _recording_backend(BackendKind.OPENAI)
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


async def test_detect_kind(backend: FakeBackend, dead_backend_url: str) -> None:
    assert await detect_kind(backend.url) is BackendKind.OLLAMA
    backend.openai = True
    assert await detect_kind(backend.url) is BackendKind.OPENAI
    assert await detect_kind(dead_backend_url) is None


@pytest.mark.slow
async def test_openai_kind_over_the_tunnel(cloud: FakeCloud, backend: FakeBackend, start_bridge: Any) -> None:
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
async def test_auto_kind_announces_what_it_found(cloud: FakeCloud, backend: FakeBackend, start_bridge: Any) -> None:
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
