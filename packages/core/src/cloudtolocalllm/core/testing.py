"""Helpers for tests of services built on core: a real uvicorn server on a loopback port."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.types import ASGIApp

from cloudtolocalllm.core.serving import (
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_WEBSOCKET_MESSAGE_BYTES,
    bind_socket,
    serve,
)

__all__ = ["running_server"]


@asynccontextmanager
async def running_server(
    app: ASGIApp,
    *,
    host: str = "127.0.0.1",
    graceful_timeout_s: float = 5.0,
    max_websocket_message_bytes: int = DEFAULT_MAX_WEBSOCKET_MESSAGE_BYTES,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> AsyncIterator[str]:
    """Serve ``app`` on an ephemeral loopback port; yields its base URL and shuts it down gracefully."""
    sock = bind_socket(host, 0)
    port = sock.getsockname()[1]
    stop = asyncio.Event()
    task = asyncio.create_task(
        serve(
            app,
            sock=sock,
            graceful_timeout_s=graceful_timeout_s,
            shutdown_trigger=stop.wait,
            max_websocket_message_bytes=max_websocket_message_bytes,
            max_header_bytes=max_header_bytes,
        )
    )
    try:
        yield f"http://{host}:{port}"
    finally:
        stop.set()
        try:
            await asyncio.wait_for(task, graceful_timeout_s + 5)
        finally:
            sock.close()
