"""core.testing.tcp_relay: bytes through, both ways, including those read before the onward connection."""

from __future__ import annotations

import asyncio

from cloudtolocalllm.core.testing.tcp_relay import _Half, tcp_relay


async def test_bytes_go_through_both_ways() -> None:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"echo:" + await reader.readexactly(5))
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    async with server, tcp_relay(server.sockets[0].getsockname()[1]) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello")  # at once: the relay may still be dialling onward
        assert await reader.read() == b"echo:hello"
        writer.close()
        await writer.wait_closed()


async def test_the_relay_keeps_only_open_connections() -> None:
    live: set[_Half] = set()
    half = _Half(0.0, live)

    class _Transport(asyncio.Transport):
        def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
            pass

        def pause_reading(self) -> None:
            pass

    half.connection_made(_Transport())
    assert live == {half}
    half.connection_lost(None)
    assert live == set()


def test_bytes_read_before_the_onward_connection_are_sent_once_it_is_made() -> None:
    # uvloop reads what the client sent with its connection before connection_made can pause reading.
    live: set[_Half] = set()
    inbound, onward = _Half(0.0, live), _Half(0.0, live)
    sent: list[bytes] = []
    onward.write = sent.append  # type: ignore[method-assign]
    inbound.data_received(b"GET / HTTP/1.1\r\n")
    assert sent == []
    inbound.pair(onward)
    inbound.data_received(b"\r\n")
    assert sent == [b"GET / HTTP/1.1\r\n", b"\r\n"]
