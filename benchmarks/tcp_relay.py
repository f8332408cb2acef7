"""A plain TCP relay for benchmarks: bytes in, the same bytes out, optionally a fixed time later.

- Without a delay it is the least a Python hop can cost (asyncio protocols, no parsing, no copies beyond
  the kernel's): two of them in a row show what any two-process Python relay can reach on this machine,
  the ceiling for the tunnel's bulk figure.
- With ``DELAY_MS`` every byte goes out that much later, in order, both ways: a WAN round trip of
  ``2 * DELAY_MS`` on loopback with no bandwidth limit of its own, so what a window-limited stream loses to
  the round trip shows and nothing else does. (The kernel's netem would do this, but needs a module that
  containers often lack.)

Run with ``python benchmarks/tcp_relay.py TARGET_PORT [DELAY_MS]``; it prints its own port on stdout.
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque

HIGH_WATER = 4 << 20


class _Half(asyncio.Protocol):
    """One side of a relayed connection: what it receives goes to ``peer`` (after ``delay_s``)."""

    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self._due: deque[tuple[float, bytes]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)
        if self.peer is None:
            transport.pause_reading()  # until the other side is connected

    def pair(self, peer: _Half) -> None:
        self.peer = peer
        if self.transport is not None:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        assert self.peer is not None
        if not self.delay_s:
            self.peer.write(data)
            return
        loop = asyncio.get_running_loop()
        self._due.append((loop.time() + self.delay_s, data))
        if self._timer is None:
            self._timer = loop.call_at(self._due[0][0], self._release)

    def _release(self) -> None:
        assert self.peer is not None
        loop = asyncio.get_running_loop()
        self._timer = None
        while self._due and self._due[0][0] <= loop.time():
            self.peer.write(self._due.popleft()[1])
        if self._due:
            self._timer = loop.call_at(self._due[0][0], self._release)
        elif self._eof:
            self.peer.close()

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    # Without a delay, a slow receiver pauses the sender (with one, the "link" buffers, as a network does).
    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None and not self.delay_s:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None and not self.delay_s:
            self.peer.transport.resume_reading()

    def eof_received(self) -> bool:
        self._eof = True
        if not self._due and self.peer is not None:
            self.peer.close()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and not self._due:
            self.peer.close()


async def _main() -> None:
    target = int(sys.argv[1])
    delay_s = float(sys.argv[2]) / 1000 if len(sys.argv) > 2 else 0.0
    loop = asyncio.get_running_loop()
    dialling: set[asyncio.Task[None]] = set()

    def accept() -> _Half:
        inbound = _Half(delay_s)

        async def dial() -> None:
            try:
                _, outbound = await loop.create_connection(lambda: _Half(delay_s), "127.0.0.1", target)
            except OSError:
                inbound.close()
                return
            outbound.pair(inbound)
            inbound.pair(outbound)

        task = loop.create_task(dial())
        dialling.add(task)
        task.add_done_callback(dialling.discard)
        return inbound

    server = await loop.create_server(accept, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_main())
