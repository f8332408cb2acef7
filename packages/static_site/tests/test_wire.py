"""On a real socket (uvicorn on loopback): traversal attempts sent byte for byte, streaming, HEAD framing."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from cloudtolocalllm.core import ServiceApp
from cloudtolocalllm.core.testing import running_server

from .static_site_tree import INDEX_HTML, SECRET, big_content


@pytest.fixture
async def base_url(spa_app: ServiceApp) -> AsyncIterator[str]:
    async with running_server(spa_app) as url:
        yield url


async def raw_get(base_url: str, target: bytes, *, method: bytes = b"GET") -> tuple[int, bytes]:
    """Send ``target`` exactly as given (no client-side normalisation) and read the whole response."""
    parts = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    try:
        writer.write(
            method + b" " + target + b" HTTP/1.1\r\nHost: static.test\r\n"
            b"Accept: text/html,*/*\r\nAccept-Encoding: identity\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
        await writer.wait_closed()
    status = int(data.split(b" ", 2)[1])
    return status, data


def traversal_targets(tree: Path) -> list[bytes]:
    outside = str(tree.parent / "secret.txt").encode()
    return [
        b"/../secret.txt",
        b"/docs/../../secret.txt",
        b"/../../../../../../../../" + outside.lstrip(b"/"),
        b"/%2e%2e/secret.txt",
        b"/%2E%2E/secret.txt",
        b"/.%2e/secret.txt",
        b"/%2e./secret.txt",
        b"/%2e%2e%2fsecret.txt",
        b"/..%2fsecret.txt",
        b"/docs%2f..%2f..%2fsecret.txt",
        b"/%252e%252e%252fsecret.txt",
        b"/%252e%252e/secret.txt",
        b"/%25252e%25252e/secret.txt",
        b"/..\\secret.txt",
        b"/docs\\..\\..\\secret.txt",
        b"/..%5csecret.txt",
        b"/%5c..%5csecret.txt",
        b"/..%255csecret.txt",
        b"/secret.txt%00.html",
        b"/%00../secret.txt",
        b"/%c0%ae%c0%ae/secret.txt",
        b"/..;/secret.txt",
        b"//" + outside.lstrip(b"/"),
        b"/" + outside,  # "//" + the absolute path of the secret
        outside,  # an absolute path as the request target
        b"http://static.test/../secret.txt",  # absolute-form target
        b"/link-out.txt",
        b"/link-dir-out/secret2.txt",
        b"/link-dir-out/../secret.txt",
        b"/link-to-dotenv.txt",
        b"/.env",
        b"/%2eenv",
        b"/.git/config",
        b"/.git/",
        b"/docs/.hidden.html",
        b"/docs/%2ehidden.html",
    ]


async def test_traversal_never_leaks_the_secret(base_url: str, tree: Path) -> None:
    # Positive control: the same harness does see files inside the root.
    status, data = await raw_get(base_url, b"/index.html")
    assert status == 200
    assert INDEX_HTML.encode() in data

    results = {}
    for target in traversal_targets(tree):
        status, data = await raw_get(base_url, target)
        results[target] = status
        assert SECRET.encode() not in data, target
        assert INDEX_HTML.encode() not in data, target  # no SPA fallback on refused paths either
    # Every one reaches the app (none is stopped earlier by the server) and is refused as not found.
    assert set(results.values()) == {404}, results


async def test_traversal_with_httpx_preencoded_urls(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url) as client:
        for raw in (b"/%2e%2e/secret.txt", b"/%2e%2e%2fsecret.txt", b"/%252e%252e%252fsecret.txt", b"/..%5csecret.txt"):
            url = httpx.URL(base_url).copy_with(raw_path=raw)
            assert url.raw_path == raw  # httpx sends it unchanged
            response = await client.get(url, headers={"accept": "text/html"})
            assert response.status_code == 404, raw
            assert SECRET not in response.text


async def test_raw_nul_and_control_bytes_are_rejected(base_url: str) -> None:
    """Raw NUL and DEL are not valid in a request target: the HTTP parser answers 400 before the app."""
    for target in (b"/secret.txt\x00", b"/index.html\x00", b"/a\x7fb", b"/index.html\x7f"):
        status, data = await raw_get(base_url, target)
        assert status == 400, target
        assert SECRET.encode() not in data
        assert INDEX_HTML.encode() not in data


async def test_symlink_inside_root_served_on_the_wire(base_url: str) -> None:
    status, data = await raw_get(base_url, b"/link-in.html")
    assert status == 200
    assert data.endswith(INDEX_HTML.encode())


async def test_head_over_the_wire_has_length_but_no_body(base_url: str) -> None:
    status, data = await raw_get(base_url, b"/downloads/big.bin", method=b"HEAD")
    assert status == 200
    head, _, body = data.partition(b"\r\n\r\n")
    assert f"content-length: {len(big_content())}".encode() in head.lower()
    assert body == b""


async def test_download_streams_intact(base_url: str, tree: Path) -> None:
    """A 24 MiB download over a real socket arrives whole, byte for byte, and resumes with a range."""
    path = tree / "downloads" / "bundle.bin"
    block = hashlib.sha256(b"seed").digest() * 2048  # 64 KiB
    with path.open("wb") as f:
        for i in range(384):
            f.write(bytes([i % 256]) + block[1:])
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        digest = hashlib.sha256()
        async with client.stream("GET", "/downloads/bundle.bin") as response:
            assert response.status_code == 200
            assert int(response.headers["content-length"]) == path.stat().st_size
            async for chunk in response.aiter_raw():
                digest.update(chunk)
        assert digest.hexdigest() == expected
        tail = await client.get("/downloads/bundle.bin", headers={"range": "bytes=-100000"})
        assert tail.status_code == 206
        assert tail.content == path.read_bytes()[-100000:]


async def test_one_gigabyte_sparse_file_range_and_abandoned_download(base_url: str, tree: Path) -> None:
    """A 1 GiB file is never read whole: a range from its end is instant, and a client that leaves early
    does not keep the server reading (the server stays responsive for the next request)."""
    path = tree / "downloads" / "huge.img"
    size = 1024**3
    with path.open("wb") as f:
        f.truncate(size)  # sparse: costs no disk
        f.seek(size - 8)
        f.write(b"THE-END!")
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        tail = await client.get("/downloads/huge.img", headers={"range": "bytes=-8"})
        assert tail.status_code == 206
        assert tail.headers["content-range"] == f"bytes {size - 8}-{size - 1}/{size}"
        assert tail.content == b"THE-END!"
        async with client.stream("GET", "/downloads/huge.img") as response:
            assert response.headers["content-length"] == str(size)
            received = 0
            async for chunk in response.aiter_raw():
                received += len(chunk)
                if received > 1024**2:
                    break
        health = await client.get("/health")
        assert health.status_code == 200
    os.remove(path)
