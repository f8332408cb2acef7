"""A plain TCP relay for tests and benchmarks: bytes in, the same bytes out, optionally a fixed time later.

- Without a delay it is the least a Python hop can cost (asyncio protocols, no parsing, no copies beyond
  the kernel's; as a process, on uvloop where it is installed): two of them in a row show what any
  two-process Python relay can reach on this machine, the ceiling for the tunnel's figures.
- With ``DELAY_MS`` every byte goes out that much later, in order, both ways: a WAN round trip of
  ``2 * DELAY_MS`` on loopback with no bandwidth limit of its own, so what a window-limited stream loses to
  the round trip shows and nothing else does. (The kernel's netem would do this, but needs a module that
  containers often lack.)

In a test's event loop: ``async with tcp_relay(target_port, one_way_s=0.05) as port: ...``. As a process
(benchmarks): ``python -m cloudtolocalllm.core.testing.tcp_relay TARGET_PORT [DELAY_MS]``; it prints its own
port on stdout.
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

from cloudtolocalllm.core import event_loop

__all__ = ["tcp_relay"]

HIGH_WATER = 4 << 20


class _Half(asyncio.Protocol):
    """One side of a relayed connection: what it receives goes to ``peer`` (after ``delay_s``)."""

    def __init__(self, delay_s: float, live: set[_Half]) -> None:
        self.delay_s = delay_s
        self._live = live  # the relay's open halves, closed when it stops
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self._due: deque[tuple[float, bytes]] = deque()
        self._timer: asyncio.TimerHandle | None = None
        self._eof = False
        self._early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport = cast(asyncio.Transport, transport)  # uvloop's do not subclass asyncio's
        self._live.add(self)
        transport.set_write_buffer_limits(high=HIGH_WATER)
        if self.peer is None:
            transport.pause_reading()  # until the other side is connected

    def pair(self, peer: _Half) -> None:
        self.peer = peer
        early, self._early = self._early, []
        for data in early:
            self.data_received(data)
        if self.transport is not None:
            self.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.peer is None:  # read before the pause took hold (uvloop reads first): sent on once paired
            self._early.append(data)
            return
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
        self._live.discard(self)  # a long benchmark run makes many connections: keep only the open ones
        if self.peer is not None and not self._due:
            self.peer.close()


@asynccontextmanager
async def tcp_relay(target_port: int, one_way_s: float = 0.0, host: str = "127.0.0.1") -> AsyncIterator[int]:
    """Relay an ephemeral port on ``host`` to ``target_port`` on ``host``, each byte ``one_way_s`` late in both
    directions (a ``2 * one_way_s`` round trip); yields the relay's port and closes it on exit."""
    loop = asyncio.get_running_loop()
    dialling: set[asyncio.Task[None]] = set()
    halves: set[_Half] = set()

    def accept() -> _Half:
        inbound = _Half(one_way_s, halves)

        async def dial() -> None:
            try:
                _, outbound = await loop.create_connection(lambda: _Half(one_way_s, halves), host, target_port)
            except OSError:
                inbound.close()
                return
            outbound.pair(inbound)
            inbound.pair(outbound)

        task = loop.create_task(dial())
        dialling.add(task)
        task.add_done_callback(dialling.discard)
        return inbound

    server = await loop.create_server(accept, host, 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        for task in list(dialling):
            task.cancel()
        for half in list(halves):
            half.close()
        await server.wait_closed()


async def _main(target_port: int, one_way_s: float) -> None:
    async with tcp_relay(target_port, one_way_s) as port:
        print(port, flush=True)
        await asyncio.Event().wait()  # until the process is stopped


if __name__ == "__main__":
    # On uvloop where it is installed (the bridge's loop): the least a Python hop can cost, as documented.
    event_loop.run(_main(int(sys.argv[1]), float(sys.argv[2]) / 1000 if len(sys.argv) > 2 else 0.0))
