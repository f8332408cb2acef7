"""Run an ASGI app on uvicorn with graceful shutdown, and start console-script services cleanly.

On SIGTERM or SIGINT the server stops accepting connections, lets in-flight requests finish for up to
``graceful_timeout_s`` and then returns, so the process exits 0 and an orchestrator sees a clean stop.

Why uvicorn (httptools, websockets' sans-I/O protocol): every relayed request pays the server's HTTP
parsing and WebSocket framing. Measured on the tunnel, api-backend spent 1.57 ms of CPU per request on
hypercorn (h11, wsproto, pure Python) and 1.04 ms on uvicorn (C parser), same machine and load.

WebSocket permessage-deflate is off: each compressed connection costs ~100 KB of zlib state on the server
plus CPU on every message, and our WebSocket traffic is binary frames, model blobs and token streams.
Library pings are off too: the bridge protocol has its own heartbeats, with reasons on timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import NoReturn

from starlette.types import ASGIApp

from cloudtolocalllm.core.process_tuning import tune_process_for_relaying
from cloudtolocalllm.core.settings import SettingsError

__all__ = ["DEFAULT_MAX_HEADER_BYTES", "bind_socket", "exit_on_settings_error", "serve"]

KEEP_ALIVE_S = 75
"""Above common load balancer idle timeouts (AWS ALB: 60 s), so the balancer closes first."""
DEFAULT_MAX_WEBSOCKET_MESSAGE_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_HEADER_BYTES = 16 * 1024
"""A request's line and headers together, CRLFs included (enforced by server_protocols)."""


def bind_socket(host: str, port: int) -> socket.socket:
    """Bind before serving so callers (and tests using port 0) know the real port up front."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly (socket.create_server leaves proto 0): asyncio turns Nagle off only on sockets
    # whose proto says TCP, and with Nagle on, a response body written after its head waits for the
    # client's delayed ACK (~40 ms per keep-alive request, and token streams would bunch up).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((host, port))
        sock.listen(1024)
    except BaseException:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


async def serve(
    app: ASGIApp,
    *,
    sock: socket.socket,
    graceful_timeout_s: float = 30.0,
    shutdown_trigger: Callable[[], Awaitable[object]] | None = None,
    max_websocket_message_bytes: int = DEFAULT_MAX_WEBSOCKET_MESSAGE_BYTES,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> None:
    """Serve until SIGTERM/SIGINT (or ``shutdown_trigger`` returns), then drain in-flight requests.

    A request head (request line and headers) over ``max_header_bytes``, a header line over 8 KiB or more
    than 100 headers is refused with a JSON ``431`` before the app sees it (see server_protocols).
    """
    # Imported here: tools that never serve should not pay for the server stack.
    import uvicorn

    from cloudtolocalllm.core.server_protocols import bounded_http_protocol

    ws: str | type[asyncio.Protocol]
    try:
        from cloudtolocalllm.core.websocket_protocol import ServingWebSocketProtocol

        ws = ServingWebSocketProtocol  # websockets' sans-I/O protocol: paced reads, refusals logged at info only
    except ModuleNotFoundError:
        ws = "none"  # no core[websockets] (a file server): upgrade requests are plain HTTP requests

    config = uvicorn.Config(
        app,
        loop="none",  # the caller's running loop
        http=bounded_http_protocol(max_header_bytes),  # httptools, with a bounded head
        ws=ws,
        ws_max_size=max_websocket_message_bytes,
        ws_per_message_deflate=False,
        ws_ping_interval=None,
        ws_ping_timeout=None,
        lifespan="auto",
        log_config=None,  # core's JSON handler on the root logger formats uvicorn's records
        access_log=False,  # core's middleware writes the access log, without query strings
        proxy_headers=False,  # core's middleware decides which forwarded headers to trust
        server_header=False,
        timeout_keep_alive=KEEP_ALIVE_S,
        timeout_graceful_shutdown=max(1, round(graceful_timeout_s)),
    )
    server = uvicorn.Server(config)
    tune_process_for_relaying()  # the app is built: freeze it out of the collector's full passes
    # uvicorn's own signal capture re-raises the signal after shutdown (the process would die of it instead
    # of exiting 0): the caller's loop handlers, or ours below, decide when to stop.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]

    if shutdown_trigger is None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        shutdown_trigger = stop.wait

    async def stop_when_triggered() -> None:
        await shutdown_trigger()
        server.should_exit = True

    watcher = asyncio.create_task(stop_when_triggered())
    try:
        await server.serve(sockets=[sock])
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


def exit_on_settings_error(error: SettingsError, service: str) -> NoReturn:
    """Print one clear message naming every bad variable, and exit with status 2."""
    print(f"{service}: {error}", file=sys.stderr)
    raise SystemExit(2)
