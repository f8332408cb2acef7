"""Minimal raw-socket HTTP/1.1 calls the benchmarks make against any peer (the backend directly, ``ssh -R``, the
tunnel), so that the load generator is not what is measured. One request per connection: the reader knows the
answer ended when the server closes.

The four calls every peer is compared on:

- :func:`upload_seconds`: one large upload (``POST /api/blobs/...``), read back as MB/s;
- :func:`sequential_ttfb_ms`: requests one at a time, time to first byte of each;
- :func:`burst_ttfb_ms`: requests all started in the same instant, time to first byte of each;
- :func:`lines_per_s`: NDJSON lines per second over many concurrent streams.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]

ONE_CHUNK_CHAT = "/api/chat?chunks=1"
BLOB_PATH = "/api/blobs/sha256:" + "0" * 64
_BLOCK = b"x" * (1 << 20)


async def request(port: int, method: str, path: str, headers: Mapping[str, str], body_size: int = 0) -> Conn:
    """Send a request (and a ``body_size`` body of filler) on a new connection; the caller reads the answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    lines = [f"{method} {path} HTTP/1.1", "host: 127.0.0.1", "connection: close"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body_size:
        lines.append(f"content-length: {body_size}")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    sent = 0
    while sent < body_size:
        piece = _BLOCK[: min(len(_BLOCK), body_size - sent)]
        writer.write(piece)
        await writer.drain()
        sent += len(piece)
    return reader, writer


async def _head(reader: asyncio.StreamReader) -> bytes:
    """The answer's head; anything but a 200 is an error, so a peer that fails is never timed as a fast one."""
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        status_line = head.split(b"\r\n", 1)[0]
        raise RuntimeError(f"unexpected answer: {status_line!r}")
    return head


async def ttfb_ms(port: int, path: str, headers: Mapping[str, str]) -> float:
    """Milliseconds from opening the connection to the answer's head; the rest of the answer is read too."""
    started = time.perf_counter()
    reader, writer = await request(port, "POST", path, headers)
    await _head(reader)
    first = time.perf_counter() - started
    while await reader.read(1 << 16):
        pass
    writer.close()
    return first * 1000


async def count_lines(port: int, path: str, headers: Mapping[str, str]) -> int:
    """NDJSON lines of one streamed chat answer (each line of the fast backend's answers carries ``"done"``)."""
    reader, writer = await request(port, "POST", path, headers)
    await _head(reader)
    marker = b'"done"'
    count = 0
    tail = b""  # a marker split across two reads is counted once, in the second
    while data := await reader.read(1 << 16):
        window = tail + data
        count += window.count(marker)
        tail = window[1 - len(marker) :]
    writer.close()
    return count


async def upload_seconds(port: int, path: str, headers: Mapping[str, str], size: int) -> float:
    """Seconds to send a ``size``-byte body and get the answer's head and first bytes."""
    started = time.perf_counter()
    reader, writer = await request(port, "POST", path, headers, body_size=size)
    await _head(reader)
    await reader.read(1 << 16)
    writer.close()
    return time.perf_counter() - started


async def sequential_ttfb_ms(port: int, prefix: str, headers: Mapping[str, str], count: int) -> list[float]:
    """Time to first byte of ``count`` one-chunk chats, one at a time."""
    return [await ttfb_ms(port, prefix + ONE_CHUNK_CHAT, headers) for _ in range(count)]


async def burst_ttfb_ms(port: int, prefix: str, headers: Mapping[str, str], streams: int) -> list[float]:
    """Time to first byte of ``streams`` one-chunk chats started at once."""
    return list(await asyncio.gather(*(ttfb_ms(port, prefix + ONE_CHUNK_CHAT, headers) for _ in range(streams))))


async def lines_per_s(port: int, prefix: str, headers: Mapping[str, str], streams: int, lines_each: int) -> float:
    """NDJSON lines per second delivered over ``streams`` concurrent chats of ``lines_each`` lines each."""
    path = f"{prefix}/api/chat?chunks={lines_each}"
    started = time.perf_counter()
    counts = await asyncio.gather(*(count_lines(port, path, headers) for _ in range(streams)))
    elapsed = time.perf_counter() - started
    if sum(counts) < streams * lines_each:
        raise RuntimeError(f"{sum(counts)} of {streams * lines_each} lines arrived")
    return sum(counts) / elapsed
