"""Refusals on a real uvicorn server: quiet in the error log, Ollama-shaped JSON on every route.

Requests are written on raw sockets so that a head the client libraries would not send (a 9 KiB header
line, 120 headers) reaches the server as is, and the answer is read as the bytes the server wrote.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
from urllib.parse import urlsplit

import pytest

from .conftest import Cloud, CloudFactory


async def _exchange(url: str, head: bytes, body: bytes = b"") -> tuple[int, dict[str, str], bytes]:
    """Send one raw request; the status, headers and body of the answer (read until the server closes)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(head + body)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(-1), 10)
    finally:
        writer.close()
    if not raw:
        return 0, {}, b""
    header_block, _, rest = raw.partition(b"\r\n\r\n")
    status_line, *lines = header_block.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, rest


def _head(method: str, path: str, headers: list[tuple[str, str]]) -> bytes:
    if not any(name == "Connection" for name, _ in headers):
        headers = [("Connection", "close"), *headers]  # the answer ends when the server closes
    lines = [f"{method} {path} HTTP/1.1", "Host: api.test", *(f"{n}: {v}" for n, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _upgrade(extra: list[tuple[str, str]] | None = None) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    headers = [
        ("Upgrade", "websocket"),
        ("Connection", "Upgrade"),
        ("Sec-WebSocket-Key", key),
        ("Sec-WebSocket-Version", "13"),
        *(extra or []),
    ]
    return _head("GET", "/ws/bridge", headers)


async def test_refused_websocket_handshakes_write_no_error_line(cloud: Cloud, caplog: pytest.LogCaptureFixture) -> None:
    """Anyone can knock without credentials: 100 refusals must not put 100 lines in the error log."""
    caplog.set_level(logging.INFO)
    for n in range(100):
        auth = [] if n % 2 else [("Authorization", "Bearer not-a-token")]
        status, headers, body = await _exchange(cloud.url, _upgrade(auth))
        assert status == 401
        assert headers["content-type"] == "application/json"
        assert "error" in json.loads(body)
    await asyncio.sleep(0.1)  # uvicorn logs after the app returns
    errors = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert errors == [], [record.getMessage() for record in errors[:3]]


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ([("X-Padding", "a" * 9000)], "line too long"),
        ([(f"X-Pad-{n}", "b" * 20) for n in range(120)], "too many request headers"),
        ([(f"X-Pad-{n}", "c" * 4000) for n in range(5)], "too large"),
    ],
    ids=["one-9KiB-line", "120-headers", "20KiB-in-all"],
)
@pytest.mark.parametrize("route", ["/ws/bridge", "/api/ollama/api/tags", "/api/bridge/status"])
async def test_oversized_heads_get_an_ollama_shaped_431_on_every_route(
    cloud: Cloud, route: str, headers: list[tuple[str, str]], problem: str
) -> None:
    auth = [("Authorization", f"Bearer {cloud.token()}")]
    head = _upgrade(auth + headers) if route == "/ws/bridge" else _head("GET", route, auth + headers)
    status, answer_headers, body = await _exchange(cloud.url, head)
    assert status == 431
    assert answer_headers["content-type"] == "application/json"
    assert problem in json.loads(body)["error"]


async def test_a_head_within_the_limit_is_served(cloud: Cloud) -> None:
    auth = [("Authorization", f"Bearer {cloud.token()}")]
    # 15 KiB in all, every line under 8 KiB: within the default limit of 16 KiB.
    padding = [(f"X-Pad-{n}", "d" * 5000) for n in range(3)]
    status, _, body = await _exchange(cloud.url, _head("GET", "/api/bridge/status", auth + padding))
    assert status == 200
    assert "bridges" in json.loads(body)


async def test_a_head_without_end_is_refused_without_waiting_for_it(cloud: Cloud) -> None:
    """A header line that never ends is refused once the limit has been read, not held until it ends."""
    parts = urlsplit(cloud.url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(b"GET /api/bridge/status HTTP/1.1\r\nHost: api.test\r\nX-Endless: " + b"e" * 20_000)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(-1), 10)  # the head never ends: only a refusal ends this
    finally:
        writer.close()
    assert raw.startswith(b"HTTP/1.1 431 ")
    assert b'{"error":"request headers too large' in raw


async def test_the_header_limit_is_a_setting(make_cloud: CloudFactory) -> None:
    async with make_cloud(max_header_bytes=64 * 1024) as cloud:
        auth = [("Authorization", f"Bearer {cloud.token()}")]
        padding = [(f"X-Pad-{n}", "f" * 7000) for n in range(5)]  # 35 KiB in all
        status, _, _ = await _exchange(cloud.url, _head("GET", "/api/bridge/status", auth + padding))
        assert status == 200
