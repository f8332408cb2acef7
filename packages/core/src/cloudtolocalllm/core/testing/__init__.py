"""Helpers for tests of services built on core: a real uvicorn server on a loopback port, and ports.

Ports: a server binds port 0 and reports the port it got wherever it can. Two cases cannot: a port that must
refuse connections (:func:`refused_port`: held bound by the test, never listening, so nothing else can take
it), and a server that is stopped and started again on the same port (:func:`restartable_port`: below the
kernel's ephemeral range, so no ``bind(0)`` and no outgoing connection on the machine is handed it meanwhile).
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

from starlette.types import ASGIApp

from cloudtolocalllm.core.serving import (
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_WEBSOCKET_MESSAGE_BYTES,
    bind_socket,
    serve,
)

__all__ = ["refused_port", "restartable_port", "running_server", "wait_until"]


async def wait_until(condition: Callable[[], object], timeout: float = 5.0) -> None:  # noqa: ASYNC109 - the tests name a time
    """Poll ``condition`` every 10 ms until it holds; TimeoutError after ``timeout`` seconds. For a state a
    test cannot await directly (a task or a peer reaching it); never a stand-in for an event it could await."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout:g} s")
        await asyncio.sleep(0.01)


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


@contextmanager
def refused_port(host: str = "127.0.0.1") -> Iterator[int]:
    """A port on ``host`` that refuses every connection while the block runs (bound here, never listening)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        yield int(sock.getsockname()[1])


_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except OSError:  # not Linux: the IANA dynamic range
        return 49152


def restartable_port(host: str = "127.0.0.1") -> int:
    """A free port below the ephemeral range, never handed out twice in this process, for a server that a test
    stops and starts again on the same port. Anything else binds port 0."""
    low = _ephemeral_low()
    candidates = range(max(low - 12000, 1024), low - 1)
    for _ in range(1000):
        port = secrets.choice(candidates)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port below {low} on {host}")
