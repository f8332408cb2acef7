"""The library floor: the libraries the tunnel is built from, relaying a request with no project code at all.

Two processes, the tunnel's two halves with everything but the libraries taken out:

- the floor cloud: uvicorn (httptools, websockets' sans-I/O protocol, no permessage-deflate, no library
  pings, no access log, no Server header, no lifespan) with a raw ASGI app. It holds the one WebSocket the
  floor bridge opens, sends each HTTP request through it as one binary message and answers the client with
  the status and body of the reply that carries the same request id;
- the floor bridge: a ``websockets`` asyncio client (no compression, no pings) and an aiohttp
  ``ClientSession`` (``TCPConnector``, no decompression, no cookie jar) to the backend: one task per message,
  the backend's whole answer sent back in one message.

Both run on uvloop where it is installed, as api-backend and the bridge do. A request travels as
``id (4 bytes) | method SP path[?query] LF | body``, a reply as ``id (4 bytes) | status (2 bytes) | body``.

What it leaves out, all of which the tunnel does per request on the same libraries:

- authentication: no token read, no account looked up; whoever connects is the bridge;
- a protocol: no hello, frame types, versions, heartbeats or errors with reasons (a lost bridge is a 500, a
  failed backend a bare 502);
- headers: none carried either way, none filtered; the client gets a status, a length and a body;
- streaming: both bodies are read whole before they move on, so the first byte waits for the last;
- flow control: no credit, no window; a slow reader or a big body is held whole in memory;
- limits, routing by model, logs, metrics, timeouts, and the services' process tuning.

What is left is what the libraries themselves do to carry one request and its answer over one WebSocket:
parse and answer HTTP (uvicorn, httptools), frame and unframe one message each way (websockets), send the
request to the backend and read its answer (aiohttp), and the event loop's work for each. That is why it is
a floor under the tunnel's cost per request, not a competitor: a relay without the parts above would not be
a tunnel anyone could deploy, and adding any of them only adds work. It is correct only for what the
benchmarks give it: short requests answered with a short body (the one-chunk chats); never an upload or a
long stream (``peer_comparison.Peer.calls``).

As processes (``benchmarks.local_cloud.start_library_floor`` starts both):
``python -m benchmarks.library_floor cloud`` prints its port on stdout;
``python -m benchmarks.library_floor bridge WS_URL BACKEND_URL`` prints ``connected`` once its WebSocket is
open, and exits when the cloud closes it.
"""

from __future__ import annotations

import asyncio
import struct
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from cloudtolocalllm.core import bind_socket, event_loop

__all__ = ["CONNECTED", "FloorCloud"]

CONNECTED = "connected"
"""What the floor bridge prints once its WebSocket to the floor cloud is open."""

_ID = struct.Struct("!I")
_STATUS = struct.Struct("!H")
_HEAD = _ID.size + _STATUS.size  # a reply's id and status

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class FloorCloud:
    """The raw ASGI app of the floor cloud: HTTP requests go out over the bridge's WebSocket, replies come back
    by request id."""

    def __init__(self) -> None:
        self._to_bridge: Send | None = None
        self._bridge_here = asyncio.Event()
        self._waiting: dict[int, asyncio.Future[bytes]] = {}
        self._last_id = 0

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._relay(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._hold_bridge(receive, send)

    async def _relay(self, scope: Message, receive: Receive, send: Send) -> None:
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        target = scope["raw_path"]  # without the query, in ASGI
        if scope["query_string"]:
            target += b"?" + scope["query_string"]
        await self._bridge_here.wait()
        assert self._to_bridge is not None
        self._last_id = request_id = (self._last_id + 1) & 0xFFFFFFFF
        reply = self._waiting[request_id] = asyncio.get_running_loop().create_future()
        request = _ID.pack(request_id) + scope["method"].encode() + b" " + target + b"\n" + body
        await self._to_bridge({"type": "websocket.send", "bytes": request})
        answer = await reply
        out = answer[_HEAD:]
        await send(
            {
                "type": "http.response.start",
                "status": _STATUS.unpack_from(answer, _ID.size)[0],
                "headers": [(b"content-length", b"%d" % len(out))],
            }
        )
        await send({"type": "http.response.body", "body": out})

    async def _hold_bridge(self, receive: Receive, send: Send) -> None:
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        self._to_bridge = send
        self._bridge_here.set()
        while (message := await receive())["type"] == "websocket.receive":
            data = message["bytes"]
            reply = self._waiting.pop(_ID.unpack_from(data)[0], None)
            if reply is not None and not reply.done():
                reply.set_result(data)
        if self._to_bridge is send:  # gone: its requests fail (a 500), the next ones wait for another bridge
            self._to_bridge = None
            self._bridge_here.clear()
            waiting, self._waiting = self._waiting, {}
            for reply in waiting.values():
                if not reply.done():
                    reply.set_exception(ConnectionError("the floor bridge left"))


async def _serve_cloud() -> None:
    import uvicorn

    sock = bind_socket("127.0.0.1", 0)  # core's: Nagle off, as api-backend's
    config = uvicorn.Config(
        FloorCloud(),
        loop="none",  # this running loop
        http="httptools",
        ws="websockets-sansio",
        ws_per_message_deflate=False,
        ws_ping_interval=None,
        ws_ping_timeout=None,
        lifespan="off",
        access_log=False,
        server_header=False,
        log_level="warning",
    )
    print(sock.getsockname()[1], flush=True)
    await uvicorn.Server(config).serve(sockets=[sock])


async def _run_bridge(cloud_url: str, backend_url: str) -> None:
    import aiohttp
    from websockets.asyncio.client import ClientConnection, connect
    from yarl import URL

    async def carry(ws: ClientConnection, session: aiohttp.ClientSession, request: bytes) -> None:
        head_end = request.index(b"\n", _ID.size)
        method, target = request[_ID.size : head_end].decode("latin-1").split(" ", 1)
        url = URL(backend_url + target, encoded=True)
        try:
            async with session.request(method, url, data=request[head_end + 1 :]) as response:
                status, body = response.status, await response.read()
        except aiohttp.ClientError:  # answered, so that a broken backend fails a benchmark instead of hanging it
            status, body = 502, b""
        await ws.send(request[: _ID.size] + _STATUS.pack(status) + body)

    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(), auto_decompress=False, cookie_jar=aiohttp.DummyCookieJar()
    )
    async with session, connect(cloud_url, compression=None, ping_interval=None) as ws:
        print(CONNECTED, flush=True)
        carrying: set[asyncio.Task[None]] = set()
        async for message in ws:
            assert isinstance(message, bytes)
            task = asyncio.create_task(carry(ws, session, message))
            carrying.add(task)  # held until done: the loop keeps only weak references to tasks
            task.add_done_callback(carrying.discard)


def main(argv: list[str]) -> None:
    match argv:
        case ["cloud"]:
            event_loop.run(_serve_cloud())
        case ["bridge", cloud_url, backend_url]:
            event_loop.run(_run_bridge(cloud_url, backend_url.rstrip("/")))
        case _:
            raise SystemExit("usage: python -m benchmarks.library_floor cloud | bridge WS_URL BACKEND_URL")


if __name__ == "__main__":
    main(sys.argv[1:])
