"""Large files at the ASGI level: bounded chunks, bounded memory, reading stops when the client leaves."""

from __future__ import annotations

import asyncio
import os
import threading
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from starlette.types import Message

from cloudtolocalllm.static_site.files import Found
from cloudtolocalllm.static_site.server import CHUNK_SIZE, FileChangedError, StaticFiles, _in_pool


def _scope(path: str, *headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": list(headers),
    }


def _sparse(path: Path, size: int) -> Path:
    with path.open("wb") as f:
        f.truncate(size)
    return path


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every ``os.pread`` the server makes from now on (how it reads files)."""
    reads: list[int] = []
    real_pread = os.pread

    def counting_pread(fd: int, n: int, offset: int) -> bytes:
        data = real_pread(fd, n, offset)
        reads.append(len(data))
        return data

    monkeypatch.setattr(os, "pread", counting_pread)
    return reads


class Peer:
    """An ASGI client that records what it is sent and can hang up after some body messages."""

    def __init__(self, *, leave_after: int | None = None) -> None:
        self.leave_after = leave_after
        self.start: Message | None = None
        self.sizes: list[int] = []
        self.more: list[bool] = []
        self.body = bytearray()  # kept only up to a small size: the big tests send gigabytes of zeros
        self._requested = False
        self._gone = asyncio.Event()

    async def receive(self) -> Message:
        if not self._requested:
            self._requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.start = message
            return
        self.sizes.append(len(message["body"]))
        if len(self.body) < CHUNK_SIZE:
            self.body += message["body"][: CHUNK_SIZE - len(self.body)]
        self.more.append(message.get("more_body", False))
        if self.leave_after is not None and len(self.sizes) >= self.leave_after:
            self._gone.set()


async def test_a_gigabyte_streams_in_bounded_chunks_and_stops_when_the_client_leaves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _sparse(tmp_path / "huge.img", 1024**3)
    reads = _count_reads(monkeypatch)
    peer = Peer(leave_after=3)
    app = StaticFiles(tmp_path)
    await asyncio.wait_for(app(_scope("/huge.img"), peer.receive, peer.send), 10)

    assert peer.start is not None
    assert peer.start["status"] == 200
    assert (b"content-length", str(1024**3).encode()) in peer.start["headers"]
    assert 3 <= len(peer.sizes) <= 5
    assert all(size == CHUNK_SIZE for size in peer.sizes)
    assert all(peer.more)  # never claimed to be finished
    assert sum(reads) <= 6 * CHUNK_SIZE  # stopped reading within a couple of chunks of the hang-up


async def test_streaming_memory_stays_bounded(tmp_path: Path) -> None:
    size = 64 * 1024**2
    _sparse(tmp_path / "big.img", size)
    peer = Peer()
    app = StaticFiles(tmp_path)
    tracemalloc.start()
    try:
        await app(_scope("/big.img"), peer.receive, peer.send)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert sum(peer.sizes) == size
    assert max(peer.sizes) <= CHUNK_SIZE
    assert peer.more[-1] is False and all(peer.more[:-1])
    assert peak < 16 * CHUNK_SIZE, peak  # 2 MiB: a few chunks in flight, not the 64 MiB file


async def test_ranges_of_large_files_read_only_the_range(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _sparse(tmp_path / "big.img", 1024**3)
    with path.open("r+b") as f:
        f.seek(512 * 1024**2)
        f.write(b"middle")
    reads = _count_reads(monkeypatch)
    peer = Peer()
    app = StaticFiles(tmp_path)
    await app(_scope("/big.img", (b"range", b"bytes=536870912-536870917")), peer.receive, peer.send)
    assert peer.start is not None
    assert peer.start["status"] == 206
    assert (b"content-range", b"bytes 536870912-536870917/1073741824") in peer.start["headers"]
    assert bytes(peer.body) == b"middle"
    assert peer.sizes == [6]
    assert sum(reads) == 6  # the six bytes asked for, not the gigabyte before them


async def test_a_file_that_shrinks_mid_download_fails_the_response(tmp_path: Path) -> None:
    path = _sparse(tmp_path / "moving.img", 8 * CHUNK_SIZE)
    shrunk = False

    class Shrinker(Peer):
        async def send(self, message: Message) -> None:
            nonlocal shrunk
            await super().send(message)
            if self.sizes and not shrunk:
                shrunk = True
                os.truncate(path, 2 * CHUNK_SIZE)

    peer = Shrinker()
    with pytest.raises(FileChangedError):
        await StaticFiles(tmp_path)(_scope("/moving.img"), peer.receive, peer.send)
    assert sum(peer.sizes) == 2 * CHUNK_SIZE
    assert all(peer.more)  # the response was never marked complete with the wrong length


async def test_open_descriptors_are_closed(tmp_path: Path) -> None:
    _sparse(tmp_path / "big.img", 4 * CHUNK_SIZE)
    (tmp_path / "small.txt").write_text("x")
    app = StaticFiles(tmp_path)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        for scope in (
            _scope("/big.img"),
            _scope("/big.img", (b"range", b"bytes=0-0")),
            _scope("/big.img", (b"range", b"bytes=999999999-")),
            _scope("/small.txt"),
            _scope("/missing.txt"),
        ):
            await app(scope, Peer().receive, Peer().send)
        await app(_scope("/big.img"), (leaving := Peer(leave_after=1)).receive, leaving.send)
    assert len(os.listdir("/proc/self/fd")) <= before + 2


async def test_a_cancelled_lookup_closes_the_file_it_opened(tmp_path: Path) -> None:
    """If the request is cancelled while its lookup runs (e.g. shutdown), the descriptor is not leaked."""
    path = _sparse(tmp_path / "big.img", 1024)
    started, release = threading.Event(), threading.Event()
    opened: list[int] = []

    def slow_lookup() -> Found:
        started.set()
        release.wait(10)
        fd = os.open(path, os.O_RDONLY)
        opened.append(fd)
        return Found(
            path=str(path),
            size=1024,
            mtime=0.0,
            etag='"x"',
            coding=None,
            content_type="application/octet-stream",
            vary=False,
            fd=fd,
        )

    task = asyncio.create_task(_in_pool(slow_lookup))
    await asyncio.to_thread(started.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    release.set()
    for _ in range(100):
        if opened and not _is_open(opened[0]):
            break
        await asyncio.sleep(0.02)
    assert opened
    assert not _is_open(opened[0])


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True
