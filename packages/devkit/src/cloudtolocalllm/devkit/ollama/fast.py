"""The Ollama double's fast form, for benchmarks: raw asyncio HTTP/1.1, no framework, so that what is measured
is the tunnel, not the backend. It answers the few calls the benchmarks make:

- ``POST /api/chat``: NDJSON, ``chunks`` lines (query ``?chunks=N&delay_ms=D``), flushed one by one; with
  ``&lines_per_write=K`` K lines go out per write (a producer far faster than its reader).
- ``POST /api/blobs/<anything>``: reads the body, answers with the byte count.
- ``GET /api/version``: a tiny JSON answer (time-to-first-byte probes).
- ``GET /api/tags``: one model, so a bridge reports it.

Run it with ``python -m cloudtolocalllm.devkit.ollama.fast [PORT]``; it prints its port on stdout.
"""

from __future__ import annotations

import asyncio
import sys
from urllib.parse import parse_qs, urlsplit

_PREFIX = b'{"model":"bench","created_at":"2026-01-01T00:00:00Z","message":{"role":"assistant","content":'
LINE = _PREFIX + b'"tok"},"done":false}\n'
DONE = _PREFIX + b'""},"done":true}\n'
TAGS = b'{"models":[{"name":"bench:latest","model":"bench:latest","size":1,"digest":"0"}]}'


async def _read_head(reader: asyncio.StreamReader) -> tuple[str, str, dict[str, str]] | None:
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    lines = raw.decode("latin-1").split("\r\n")
    method, target, _ = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return method, target, headers


async def _drain_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> int:
    if "content-length" in headers:
        remaining = int(headers["content-length"])
        total = remaining
        while remaining:
            chunk = await reader.read(min(remaining, 1 << 20))
            if not chunk:
                break
            remaining -= len(chunk)
        return total
    if headers.get("transfer-encoding", "").lower() == "chunked":
        total = 0
        while True:
            size = int((await reader.readline()).strip() or b"0", 16)
            if size == 0:
                await reader.readline()
                return total
            await reader.readexactly(size)
            await reader.readline()
            total += size
    return 0


def _fixed(status: str, body: bytes, content_type: str = "application/json") -> bytes:
    return f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while (head := await _read_head(reader)) is not None:
            _method, target, headers = head
            url = urlsplit(target)
            size = await _drain_body(reader, headers)
            if url.path == "/api/chat":
                params = parse_qs(url.query)
                chunks = int(params.get("chunks", ["50"])[0])
                delay = float(params.get("delay_ms", ["0"])[0]) / 1000
                per_write = int(params.get("lines_per_write", ["1"])[0])
                block = LINE * per_write
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/x-ndjson\r\ntransfer-encoding: chunked\r\n\r\n"
                )
                for i in range(0, chunks, per_write):
                    data = block if i + per_write <= chunks else LINE * (chunks - i)
                    writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                    await writer.drain()
                    if delay:
                        await asyncio.sleep(delay)
                    elif i // per_write % 16 == 15:
                        # drain() does not yield while the kernel takes everything: without this, the
                        # first streams would fill their socket buffers (MBs) before later ones start.
                        await asyncio.sleep(0)
                writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(DONE), DONE))
            elif url.path.startswith("/api/blobs/"):
                writer.write(_fixed("200 OK", b'{"bytes":%d}' % size))
            elif url.path == "/api/tags":
                writer.write(_fixed("200 OK", TAGS))
            elif url.path in ("/api/version", "/"):
                writer.write(_fixed("200 OK", b'{"version":"bench"}'))
            else:
                writer.write(_fixed("404 Not Found", b'{"error":"not found"}'))
            await writer.drain()
            if headers.get("connection", "").lower() == "close":
                break
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def start(port: int = 0) -> asyncio.Server:
    return await asyncio.start_server(_handle, "127.0.0.1", port, limit=1 << 20, backlog=1024)


async def _main() -> None:
    server = await start(int(sys.argv[1]) if len(sys.argv) > 1 else 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_main())
