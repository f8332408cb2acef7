"""A TCP proxy that delays every byte by a fixed one-way latency: a WAN round trip on loopback.

Bytes are read as fast as they come and written out ``delay_ms`` later, in order, in both directions, so the
link has the given latency and no bandwidth limit of its own: what a window-limited stream loses to the
round trip shows, and nothing else does. (The kernel's netem would do this, but needs a module that
containers often lack.)

Run with ``python benchmarks/delay_proxy.py TARGET_PORT DELAY_MS``; it prints its own port on stdout.
"""

from __future__ import annotations

import asyncio
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay_s: float) -> None:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()

    async def deliver() -> None:
        while (item := await queue.get()) is not None:
            due, data = item
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    delivering = asyncio.create_task(deliver())
    try:
        while data := await reader.read(1 << 18):
            queue.put_nowait((loop.time() + delay_s, data))
        queue.put_nowait(None)
        await delivering
    except (ConnectionError, asyncio.CancelledError):
        delivering.cancel()
    finally:
        writer.close()


async def _main() -> None:
    target = int(sys.argv[1])
    delay_s = float(sys.argv[2]) / 1000

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", target)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, server_w, delay_s), _pipe(server_r, client_w, delay_s))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(_main())
