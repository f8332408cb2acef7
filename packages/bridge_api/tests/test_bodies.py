"""Request bodies at api-backend: refused from Content-Length at once, bounded per account, JSON checked."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import msgspec
import pytest

from cloudtolocalllm.bridge_api.settings import ApiSettings
from cloudtolocalllm.core.testing import wait_until
from cloudtolocalllm.devkit.peers import FakeBridge, Reply, chunks_of
from cloudtolocalllm.protocol import Open

from .conftest import Cloud, CloudFactory

KiB = 1024


async def test_an_announced_body_over_the_limit_is_refused_before_it_is_sent(cloud: Cloud) -> None:
    """100 MiB announced, nothing sent: the 413 must come from the Content-Length alone."""
    parts = urlsplit(cloud.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        head = (
            "POST /api/ollama/api/chat HTTP/1.1\r\nHost: api.test\r\n"
            f"Authorization: Bearer {cloud.token()}\r\nContent-Type: application/json\r\n"
            "Content-Length: 104857600\r\n\r\n"
        )
        writer.write(head.encode() + b'{"model": "smollm2:135m", "messages": [')
        await writer.drain()
        head_block = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)  # the body never comes
        status_line, *lines = head_block.decode("latin-1").strip().split("\r\n")
        headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        body = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 10)
    finally:
        writer.close()
    assert status_line == "HTTP/1.1 413 Request Entity Too Large"
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"error": "request body larger than 67108864 bytes"}


async def test_malformed_json_is_a_400_the_bridge_never_sees(cloud: Cloud) -> None:
    async with FakeBridge(cloud.url, cloud.token()) as bridge, cloud.client() as client:
        for content in (b'{"model": "smollm2:135m", "messages": [', b"not json", b"[1, 2]", b'{"model": 5}'):
            response = await client.post("/api/ollama/api/chat", content=content)
            assert response.status_code == 400, content
            assert response.json()["error"].startswith("request body is not a valid JSON object: "), content
        # Well-formed JSON still goes through.
        response = await client.post("/api/ollama/api/chat", json={"model": "smollm2:135m", "messages": []})
        assert response.status_code == 200
    assert [frame.path for frame in bridge.opens] == ["/api/chat"]


def _held_reply(release: asyncio.Event) -> object:
    async def handler(open_frame: Open, body: bytes) -> Reply:
        async def chunks() -> AsyncIterator[bytes]:
            await release.wait()
            yield b'{"done":true}\n'

        return Reply(headers=[("content-type", "application/x-ndjson")], chunks=chunks())

    return handler


def _chat_body(size: int) -> bytes:
    prefix = b'{"model": "smollm2:135m", "messages": [{"role": "user", "content": "'
    return prefix + b"a" * (size - len(prefix) - 4) + b'"}]}'


async def test_one_account_cannot_hold_more_json_than_its_budget(make_cloud: CloudFactory) -> None:
    release = asyncio.Event()
    settings = {"max_json_body_bytes": 64 * KiB, "max_json_bytes_per_account": 100 * KiB}
    async with make_cloud(**settings) as cloud:
        handler = _held_reply(release)
        async with (
            FakeBridge(cloud.url, cloud.token("alice"), handler=handler),  # type: ignore[arg-type]
            FakeBridge(cloud.url, cloud.token("bob"), bridge_id="bob-1", handler=handler),  # type: ignore[arg-type]
            cloud.client("alice") as alice,
            cloud.client("bob") as bob,
        ):
            first = asyncio.create_task(alice.post("/api/ollama/api/chat", content=_chat_body(60 * KiB)))
            budget = cloud.app.state.relay_budget
            await wait_until(lambda: budget.held("alice") == 60 * KiB)
            # 60 KiB held: another 60 KiB does not fit in 100, announced (at once) or chunked (as it arrives).
            over = await alice.post("/api/ollama/api/chat", content=_chat_body(60 * KiB))
            chunked = await alice.post("/api/ollama/api/chat", content=chunks_of(_chat_body(60 * KiB)))
            for response in (over, chunked):
                assert response.status_code == 429
                assert response.headers["retry-after"] == "1"
                assert "too much JSON in flight for this account" in response.json()["error"]
            # A smaller body fits beside it, and another account has its own budget.
            small = asyncio.create_task(alice.post("/api/ollama/api/chat", content=_chat_body(30 * KiB)))
            other = asyncio.create_task(bob.post("/api/ollama/api/chat", content=_chat_body(60 * KiB)))
            await wait_until(lambda: budget.held("alice") == 90 * KiB and budget.held("bob") == 60 * KiB)
            release.set()
            assert [(await task).status_code for task in (first, small, other)] == [200, 200, 200]
            assert budget.held("alice") == budget.held("bob") == 0  # given back when the requests ended
            again = await alice.post("/api/ollama/api/chat", content=_chat_body(60 * KiB))
            assert again.status_code == 200


def test_the_per_account_budget_must_hold_one_body() -> None:
    with pytest.raises(ValueError, match="API_MAX_JSON_BYTES_PER_ACCOUNT must be at least"):
        msgspec.convert({"max_json_bytes_per_account": 1024 * KiB}, ApiSettings)
