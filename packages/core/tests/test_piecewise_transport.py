"""core.piecewise_transport on uvloop's real transports: a client that stops reading leaves at most one piece
in uvloop's hands, every byte still arrives, in order, and a close waits for what was kept."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator
from typing import cast

import uvloop

from cloudtolocalllm.core.piecewise_transport import PIECE, PiecewiseTransport, is_uvloop_transport

CHUNK = 256 * 1024


class _Server(asyncio.Protocol):
    """Feeds its PiecewiseTransport as the server protocol in core does; counts pauses."""

    def __init__(self, made: asyncio.Future[_Server], stalled: bool) -> None:
        self.made = made
        self.stalled = stalled
        self.pieces: PiecewiseTransport | None = None
        self.pauses = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert is_uvloop_transport(transport)
        if self.stalled:
            transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        self.pieces = PiecewiseTransport(cast(asyncio.Transport, transport))
        self.made.set_result(self)

    def pause_writing(self) -> None:
        self.pauses += 1

    def resume_writing(self) -> None:
        assert self.pieces is not None
        self.pieces.feed()


@contextlib.asynccontextmanager
async def _pair(stalled: bool = True) -> AsyncIterator[tuple[_Server, socket.socket]]:
    """A server protocol and a client socket (with a tiny receive buffer when ``stalled``), closed on exit."""
    loop = asyncio.get_running_loop()
    made: asyncio.Future[_Server] = loop.create_future()
    server = await loop.create_server(lambda: _Server(made, stalled), "127.0.0.1", 0)
    with socket.socket() as client:
        if stalled:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # small: the socket stops taking soon
        client.connect(server.sockets[0].getsockname())
        client.setblocking(False)
        try:
            yield await made, client
        finally:
            server.close()


async def _read_all(client: socket.socket, until: int | None = None) -> bytes:
    loop = asyncio.get_running_loop()
    got = bytearray()
    while until is None or len(got) < until:
        data = await loop.sock_recv(client, 65536)
        if not data:
            break
        got += data
    return bytes(got)


def _write_chunks(protocol: _Server) -> tuple[PiecewiseTransport, bytes]:
    """Four 256 KiB chunks written through the protocol's transport; returns it and what was written."""
    pieces = protocol.pieces
    assert pieces is not None
    chunks = [os.urandom(CHUNK) for _ in range(4)]
    for chunk in chunks:
        pieces.write(chunk)
    return pieces, b"".join(chunks)


def test_a_stalled_client_leaves_uvloop_one_piece_and_gets_every_byte_in_order() -> None:
    async def main() -> None:
        async with _pair() as (protocol, client):
            pieces, written = _write_chunks(protocol)
            await asyncio.sleep(0.05)
            # uvloop holds at most the piece the socket stopped on; the rest is kept, as bytes, not objects.
            assert 0 < pieces.transport.get_write_buffer_size() <= PIECE
            assert pieces.get_write_buffer_size() > 3 * CHUNK
            assert protocol.pauses >= 1
            assert await _read_all(client, until=4 * CHUNK) == written
            assert pieces.get_write_buffer_size() == 0

    uvloop.run(main())


def test_a_close_waits_for_what_was_kept() -> None:
    async def main() -> None:
        async with _pair() as (protocol, client):
            pieces, written = _write_chunks(protocol)
            pieces.close()
            assert pieces.is_closing()
            pieces.write(b"after the close")  # dropped, as by a closed transport
            assert await _read_all(client) == written  # then EOF
            assert pieces.transport.is_closing()

    uvloop.run(main())


def test_a_client_that_reads_takes_small_and_large_writes_whole() -> None:
    async def main() -> None:
        async with _pair(stalled=False) as (protocol, client):
            assert protocol.pieces is not None
            reading = asyncio.ensure_future(_read_all(client, until=PIECE * 3 + 5))
            protocol.pieces.write(b"small")
            protocol.pieces.write(os.urandom(PIECE * 3))
            assert len(await reading) == PIECE * 3 + 5
            assert protocol.pieces.get_write_buffer_size() == 0
            assert protocol.pauses == 0

    uvloop.run(main())
